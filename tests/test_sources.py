
import numpy as np
import pytest

from fedcore.resolve import make_config
from fedcore.data import load_federated
from fedcore.data.sources import DataSourceError, load_source
from fedcore.data.tokenize import cache_dir


def test_csv_with_header_and_multi_column_text(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('title,body,label\n"Hello","big world",sports\n"Stocks","fall, again",business\n"Goal","late",sports\n')
    ds = load_source(f"csv:{f}?text=title,body&label=label")
    assert ds.train.texts == ["Hello big world", "Stocks fall, again", "Goal late"]
    assert ds.class_names == ["business", "sports"]  # string labels, sorted
    assert ds.train.labels.tolist() == [1, 0, 1]


def test_csv_without_header_label_offset_and_tsv(tmp_path):
    f = tmp_path / "test.csv"
    f.write_text('"3","T one","D one"\n"1","T two","D two"\n')
    ds = load_source(f"csv:{f}?header=none&text=1,2&label=0&label_offset=1&class_names=a,b,c")
    assert ds.train.texts == ["T one D one", "T two D two"]
    assert ds.train.labels.tolist() == [2, 0]
    assert ds.class_names == ["a", "b", "c"]
    t = tmp_path / "x.tsv"
    t.write_text("text\tlabel\nfoo, bar\t0\nbaz\t1\n")
    ds = load_source(f"tsv:{t}")
    assert ds.train.texts == ["foo, bar", "baz"] and ds.train.labels.tolist() == [0, 1]


def test_csv_missing_column_is_explained(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label\nx,0\n")
    with pytest.raises(DataSourceError, match=r"column\(s\) \['body'\] not found; columns are \['text', 'label'\]"):
        load_source(f"csv:{f}?text=body")


def test_hub_unreachable_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataSourceError) as info:
        load_source("hf:surely_not_cached_dataset_xyz")
    msg = str(info.value)
    assert "could not load 'surely_not_cached_dataset_xyz' from the Hugging Face hub" in msg
    assert "csv:/path/to/train.csv" in msg  # tells the user how to point at a local copy


def test_synthetic_is_deterministic_balanced_and_labelled():
    a = load_source("synthetic:topics?n=200&test=40&classes=3")
    b = load_source("synthetic:topics?n=200&test=40&classes=3")
    c = load_source("synthetic:topics?n=200&test=40&classes=3&seed=1")
    assert a.train.texts == b.train.texts and a.train.labels.tolist() == b.train.labels.tolist()
    assert a.train.texts != c.train.texts
    assert a.synthetic and "SYNTHETIC" in a.name and all(n.startswith("synthetic-") for n in a.class_names)
    assert np.bincount(a.test.labels).tolist() == [14, 13, 13]


def test_sklearn_digits_with_mlp():
    cfg = make_config({}, **{"data.source": "sklearn:digits", "model.name": "mlp", "partition.num_clients": 5})
    d = load_federated(cfg)
    assert d.num_classes == 10 and d.in_features == 64
    assert len(d.train_labels) + len(d.test_labels) == 1797
    # the test split is stratified and fixed whatever the run seed
    d2 = load_federated(make_config({}, **{"data.source": "sklearn:digits", "model.name": "mlp", "seed": 5}))
    assert (d.test_labels == d2.test_labels).all()


def test_text_model_on_feature_data_is_refused():
    cfg = make_config({}, **{"data.source": "sklearn:digits", "model.name": "textcnn"})
    with pytest.raises(DataSourceError, match="takes text input but 'sklearn:digits' gives features"):
        load_federated(cfg)


def test_tokenized_tensors_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCORE_CACHE", str(tmp_path / "c"))
    src = "synthetic:topics?n=100&test=20"
    cfg = make_config({}, **{"data.source": src, "partition.num_clients": 3})
    d1 = load_federated(cfg)
    files = sorted(cache_dir().glob("*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    d2 = load_federated(cfg)
    assert files[0].stat().st_mtime_ns == stamp  # a hit: nothing rewritten
    assert (d1.train_inputs["input_ids"] == d2.train_inputs["input_ids"]).all()
    load_federated(make_config({}, **{"data.source": src + "&seed=3", "partition.num_clients": 3}))
    assert len(list(cache_dir().glob("*.pt"))) == 2  # other content, other key


def test_test_file_string_labels_follow_the_training_classes(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,neg\nb,neu\nc,pos\nd,neg\ne,neu\nf,pos\n")
    test = tmp_path / "test.csv"
    test.write_text("text,label\nx,pos\ny,neg\n")  # no 'neu': numbered alone, 'pos' would be 1
    cfg = make_config({}, **{"data.source": f"csv:{train}", "data.test_source": f"csv:{test}",
                             "partition.num_clients": 2})
    d = load_federated(cfg)
    assert d.class_names == ["neg", "neu", "pos"]
    assert d.test_labels.tolist() == [2, 0]
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nx,maybe\n")
    cfg = make_config({}, **{"data.source": f"csv:{train}", "data.test_source": f"csv:{bad}",
                             "partition.num_clients": 2})
    with pytest.raises(DataSourceError, match=r"classes \['maybe'\] that the training source does not have"):
        load_federated(cfg)


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\n")
    monkeypatch.chdir(tmp_path)
    cfg = make_config({}, **{"data.source": "csv:d.csv?label=label"})
    assert cfg.data.source == f"csv:{tmp_path / 'd.csv'}?label=label"


def test_empty_headerless_file_is_explained(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("")
    with pytest.raises(DataSourceError, match="has no rows; a data source needs labelled samples"):
        load_source(f"csv:{f}?header=none&text=1&label=0")


def test_class_names_must_match_the_labels(tmp_path):
    """One name per class, for string and integer labels alike; names that are the labels give the
    ids in their order (not a silent positional rename)."""
    words = tmp_path / "words.tsv"
    words.write_text("text\tlabel\n" + "".join(f"t{i}\t{['neg', 'pos', 'neu'][i % 3]}\n" for i in range(9)))
    with pytest.raises(DataSourceError, match=r"class_names: 2 names \(neg, pos\) for 3 distinct labels "
                                              r"\(neg, neu, pos\); allowed: exactly 3 names"):
        load_source(f"tsv:{words}?class_names=neg,pos")
    ds = load_source(f"tsv:{words}?class_names=pos,neu,neg")
    assert ds.class_names == ["pos", "neu", "neg"] and ds.train.labels[:3].tolist() == [2, 0, 1]
    ints = tmp_path / "ints.csv"
    ints.write_text("text,label\n" + "".join(f"t{i},{i % 14}\n" for i in range(28)))  # 14 classes
    with pytest.raises(DataSourceError, match=r"class_names: 15 names .* 14 classes; allowed: exactly 14 names"):
        load_source(f"csv:{ints}?class_names=" + ",".join(f"c{i}" for i in range(15)))
    with pytest.raises(DataSourceError, match=r"class_names: 13 names"):
        load_source(f"csv:{ints}?class_names=" + ",".join(f"c{i}" for i in range(13)))
    assert load_source(f"csv:{ints}?class_names=" + ",".join(f"c{i}" for i in range(14))).num_classes == 14
    # a test file may lack classes its names list (partial labels), never hold one outside them
    from fedcore.data.sources import load_test_split

    test = tmp_path / "test.csv"
    test.write_text("text,label\nx,1\ny,3\n")  # ids 1 and 3 of 14
    split = load_test_split(f"csv:{test}?class_names=" + ",".join(f"c{i}" for i in range(14)), [f"c{i}" for i in range(14)])
    assert split.labels.tolist() == [1, 3]
    named = tmp_path / "named.tsv"
    named.write_text("text\tlabel\nx\tneu\n")
    assert load_test_split(f"tsv:{named}?class_names=pos,neu,neg", ["pos", "neu", "neg"]).labels.tolist() == [1]
