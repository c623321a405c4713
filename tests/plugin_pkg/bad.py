"""Classes that must be refused as methods, each for one reason (tests/test_plugins.py)."""
from fedcore.methods.fedavg import FedAvg


class NotAMethod:  # the right shape, but not a fedcore Method
    name = "not_a_method"
    summary = "not a subclass of Method"

    def aggregate(self, global_state, server_state, updates):
        return global_state, server_state


class Imposter(FedAvg):  # takes a built-in's name
    name = "fedavg"
    summary = "a second fedavg"


class Nameless(FedAvg):  # would run under the name it inherits, 'fedavg'
    summary = "forgot its name"


class HalfPersonal(FedAvg):  # personalizes, with a loss but without saying how stage 2 trains
    name = "half_personal"
    summary = "a personal loss, no personal stage"
    personalizes = True

    def personal_loss(self, global_logits, private_logits, labels):
        return private_logits.sum()


class DictRecord(FedAvg):  # keeps its server state in a dict, as methods did before the typed record
    name = "dict_record"
    summary = "a dict as its record"
    Record = dict
