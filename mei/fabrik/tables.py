"""nnfabrik's core tables (``Fabrikant``, ``Seed``, ``Dataset``, ``Model``, ``Trainer``) and its trained-model
template, on DataJoint 2.3. The core tables live in the schema ``MEI_FABRIK_SCHEMA`` (default
``nnfabrik_core``); a lab subclasses ``TrainedModelBase`` in its own schema."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import datajoint as dj
from torch import nn

from .. import codecs, policy  # noqa: F401 - codecs registers <torch>
from ..database import ActivatesSchema, LazySchema, PartsPerSubclass, store_name
from ..errors import ConfigurationError
from ..hashing import make_hash
from ..import_utils import import_object
from . import builder

schema = LazySchema("MEI_FABRIK_SCHEMA", "nnfabrik_core")


@schema
class Fabrikant(ActivatesSchema, dj.Manual):
    definition = """
    fabrikant_name : varchar(32)    # name of the contributor
    ---
    email = '' : varchar(64)
    affiliation = '' : varchar(32)
    dj_username = '' : varchar(64)  # the database user name of the contributor
    """


@schema
class Seed(ActivatesSchema, dj.Manual):
    definition = """
    seed : int32   # random seed
    """


class BuilderTable(ActivatesSchema, dj.Manual):
    """A table of ``<kind>_fn`` functions and their configurations, keyed by the function and config hash."""

    kind: ClassVar[str]

    @property
    def definition(self) -> str:
        kind = self.kind
        return f"""
        {kind}_fn : varchar(64)      # dotted path of the {kind} function
        {kind}_hash : varchar(64)    # hash of the configuration
        ---
        {kind}_config : <blob>       # keyword arguments of the function
        -> Fabrikant.proj({kind}_fabrikant='fabrikant_name')
        {kind}_comment = '' : varchar(256)
        {kind}_ts = CURRENT_TIMESTAMP : datetime
        """

    def _add(
        self, fn: str, config: Mapping[str, Any], fabrikant: str | None, comment: str, skip_duplicates: bool
    ) -> dict[str, str]:
        kind = self.kind
        with policy.enforced():
            function = import_object(fn)
        if not callable(function):
            raise ConfigurationError(f"{kind}_fn '{fn}' is not callable")
        if fabrikant is None:
            fabrikant = _default_fabrikant(kind)
        key = {f"{kind}_fn": fn, f"{kind}_hash": make_hash(config)}
        if self & key:
            if skip_duplicates:
                return key
            raise ValueError(f"this {kind}_fn and config are already in {type(self).__name__}: {key}")
        row = {**key, f"{kind}_config": dict(config), f"{kind}_fabrikant": fabrikant, f"{kind}_comment": comment}
        self.insert1(row)
        return key

    def fn_config(self, key: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The function path and config of the one entry that ``key`` restricts to."""
        return (self & key).fetch1(f"{self.kind}_fn", f"{self.kind}_config")


def _default_fabrikant(kind: str) -> str:
    user = dj.config["database.user"]
    names = [row["fabrikant_name"] for row in (Fabrikant & {"dj_username": user}).to_dicts()]
    if len(names) != 1:
        raise ValueError(
            f"pass {kind}_fabrikant: no single Fabrikant has dj_username '{user}' (found {names}); "
            "insert one with Fabrikant().insert1({'fabrikant_name': ..., 'dj_username': ...})"
        )
    return names[0]


@schema
class Dataset(BuilderTable):
    kind = "dataset"

    def add_entry(self, dataset_fn, dataset_config, dataset_fabrikant=None, dataset_comment="", skip_duplicates=False):
        return self._add(dataset_fn, dataset_config, dataset_fabrikant, dataset_comment, skip_duplicates)

    def build(self, key: Mapping[str, Any], seed: int) -> Any:
        return builder.get_data(*self.fn_config(key), seed=seed)


@schema
class Model(BuilderTable):
    kind = "model"

    def add_entry(self, model_fn, model_config, model_fabrikant=None, model_comment="", skip_duplicates=False):
        return self._add(model_fn, model_config, model_fabrikant, model_comment, skip_duplicates)

    def build(self, key: Mapping[str, Any], dataloaders: Any, seed: int) -> nn.Module:
        return builder.get_model(*self.fn_config(key), dataloaders=dataloaders, seed=seed)


@schema
class Trainer(BuilderTable):
    kind = "trainer"

    def add_entry(self, trainer_fn, trainer_config, trainer_fabrikant=None, trainer_comment="", skip_duplicates=False):
        return self._add(trainer_fn, trainer_config, trainer_fabrikant, trainer_comment, skip_duplicates)


class TrainedModelBase(PartsPerSubclass, dj.Computed):
    """Template of a lab's trained-model table: one row per model, dataset, trainer and seed.

    ``populate()`` builds the dataloaders and the model, trains them (outside the database transaction) and
    stores score, output and, in the part ``ModelStorage``, the trained state in the external store.
    """

    model_table = Model
    dataset_table = Dataset
    trainer_table = Trainer
    seed_table = Seed
    user_table = Fabrikant

    definition = """
    -> self.model_table
    -> self.dataset_table
    -> self.trainer_table
    -> self.seed_table
    ---
    comment = '' : varchar(768)    # short description
    score : float64                # the trainer's score (e.g. validation correlation)
    output : <blob>                # the trainer's output
    -> [nullable] self.user_table
    trainedmodel_ts = CURRENT_TIMESTAMP : datetime
    """

    class ModelStorage(dj.Part):
        @property
        def definition(self) -> str:
            return f"""
            -> master
            ---
            model_state : <torch@{store_name()}>   # the trained state dict
            """

    def make_fetch(self, key: dict) -> tuple:
        seed = (self.seed_table & key).fetch1("seed")
        return (seed,)

    def make_compute(self, key: dict, seed: int) -> tuple:
        dataloaders, model = self.load_model(key, include_state_dict=False)
        start = time.perf_counter()
        with policy.enforced():
            trainer = builder.get_trainer(*self.trainer_table().fn_config(key))
            score, output, model_state = trainer(
                model=model, dataloaders=dataloaders, seed=seed, uid=dict(key), cb=None
            )
        comment = f"trained in {time.perf_counter() - start:.1f} s"
        return float(score), output, model_state, comment

    def make_insert(self, key: dict, score: float, output: Any, model_state: Any, comment: str) -> None:
        self.insert1(dict(key, score=score, output=output, comment=comment))
        self.ModelStorage.insert1(dict(key, model_state=model_state))

    def load_model(
        self, key: Mapping[str, Any] | None = None, include_state_dict: bool = True
    ) -> tuple[Any, nn.Module]:
        """Rebuilds ``(dataloaders, model)`` of the one trained model that ``key`` restricts to.

        The key may restrict the model, dataset, trainer and seed tables instead of this one (the trained state
        is then not loaded); with ``include_state_dict=False`` the untrained model is returned.
        """
        key = dict(key or {})
        seed = (self.seed_table & key).fetch1("seed")
        with policy.enforced():
            dataloaders = self.dataset_table().build(key, seed=seed)
            model = self.model_table().build(key, dataloaders=dataloaders, seed=seed)
        if include_state_dict:
            model.load_state_dict((self.ModelStorage & key).fetch1("model_state"))
        return dataloaders, model
