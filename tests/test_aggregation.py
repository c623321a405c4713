import torch
import pytest

from fedcore.methods import get_method
from fedcore.methods.base import ClientUpdate, LocalContext, ServerState

KEYS = ("layer.lora_A.weight", "layer.lora_B.weight", "classifier.weight")


def updates(ns=(10, 30, 60)):
    g = torch.Generator().manual_seed(0)
    return [ClientUpdate(k, n, {key: torch.randn(3, 2, generator=g) for key in KEYS}) for k, n in enumerate(ns)]


def manual(ups, weights, key):
    return sum(w * u.state[key] for w, u in zip(weights, ups))


def test_fedavg_is_size_weighted_mean():
    ups = updates()
    out, server = get_method("fedavg").aggregate({}, ServerState(), ups)
    for key in KEYS:
        torch.testing.assert_close(out[key], manual(ups, [0.1, 0.3, 0.6], key))
    assert server == ServerState()  # FedAvg keeps nothing between rounds


def test_fedavgw_inverse_weights_on_lora_size_weights_on_head():
    ups = updates()
    beta = 0.5
    inv = torch.tensor([10.0, 30.0, 60.0]) ** -beta
    w_lora = (inv / inv.sum()).tolist()
    out, _ = get_method("fedavgw", {"beta": beta}).aggregate({}, ServerState(), ups)
    torch.testing.assert_close(out["layer.lora_A.weight"], manual(ups, w_lora, "layer.lora_A.weight"))
    torch.testing.assert_close(out["layer.lora_B.weight"], manual(ups, w_lora, "layer.lora_B.weight"))
    torch.testing.assert_close(out["classifier.weight"], manual(ups, [0.1, 0.3, 0.6], "classifier.weight"))
    # the small client gets the largest LoRA weight
    assert w_lora[0] > w_lora[1] > w_lora[2]


def test_fedavgw_beta_zero_is_uniform_on_lora():
    ups = updates()
    out, _ = get_method("fedavgw", {"beta": 0.0}).aggregate({}, ServerState(), ups)
    torch.testing.assert_close(out["layer.lora_A.weight"], manual(ups, [1 / 3] * 3, "layer.lora_A.weight"))
    torch.testing.assert_close(out["classifier.weight"], manual(ups, [0.1, 0.3, 0.6], "classifier.weight"))


def test_fedit_averages_factors_not_products():
    g = torch.Generator().manual_seed(1)
    # LoRA shapes: A is r x in (2 x 3), B is out x r (4 x 2); the update is B @ A
    ups = [ClientUpdate(k, n, {"l.lora_A.weight": torch.randn(2, 3, generator=g),
                               "l.lora_B.weight": torch.randn(4, 2, generator=g)}) for k, n in enumerate((1, 1, 2))]
    out, _ = get_method("fedit").aggregate({}, ServerState(), ups)
    w = [0.25, 0.25, 0.5]
    a = manual(ups, w, "l.lora_A.weight")
    b = manual(ups, w, "l.lora_B.weight")
    torch.testing.assert_close(out["l.lora_A.weight"], a)
    torch.testing.assert_close(out["l.lora_B.weight"], b)
    avg_product = sum(wk * u.state["l.lora_B.weight"] @ u.state["l.lora_A.weight"] for wk, u in zip(w, ups))
    assert not torch.allclose(b @ a, avg_product, atol=1e-3)  # FedIT's known inexactness


def test_fedit_refuses_updates_without_lora():
    ups = [ClientUpdate(0, 1, {"w": torch.ones(2)})]
    with pytest.raises(ValueError, match="no LoRA factors"):
        get_method("fedit").aggregate({}, ServerState(), ups)


def test_fedprox_gradient_is_the_proximal_term_gradient():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4))
    start = {"w": torch.randn(4)}
    method = get_method("fedprox", {"mu": 0.3})
    ctx = LocalContext(round=1, client=0, num_samples=1, params=[("w", w)], start_state=start)
    task = (w ** 2).sum()
    task.backward()
    method.after_backward(ctx)
    ref = torch.nn.Parameter(w.detach().clone())
    (ref ** 2).sum().add(method.proximal_term([("w", ref)], start, 0.3)).backward()
    torch.testing.assert_close(w.grad, ref.grad)


def test_unknown_method_param_is_named():
    with pytest.raises(ValueError, match=r"method.params.mu.*fedavgw.*beta"):
        get_method("fedavgw", {"mu": 1.0})


def test_fedavgw_splits_real_peft_keys():
    """On a real peft model, lora_A/lora_B get inverse weights and the head (modules_to_save)
    size weights."""
    from fedcore.resolve import make_config
    from fedcore.models import build_model

    model = build_model(make_config({}, **{"model.name": "tiny-bert", "model.lora.r": 2}).model, 3)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ups = [ClientUpdate(k, n, {name: torch.full((1,), float(k)) for name in names}) for k, n in enumerate((10, 90))]
    out, _ = get_method("fedavgw", {"beta": 1.0}).aggregate({}, ServerState(), ups)
    w_inv = [0.9, 0.1]  # (1/10) / (1/10 + 1/90) = 0.9
    lora = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    head = [n for n in names if "classifier" in n]
    assert lora and head and len(lora) + len(head) == len(names)
    for n in lora:
        assert out[n].item() == pytest.approx(w_inv[1])  # 0.9 * 0 + 0.1 * 1
    for n in head:
        assert out[n].item() == pytest.approx(0.9)  # size weights: 0.1 * 0 + 0.9 * 1
