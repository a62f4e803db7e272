"""DataJoint tables of MEI generation: templates for a lab's schema, and the framework's own tables.

``MEIMethod`` and ``MEISeed`` live in the schema ``MEI_SCHEMA`` (default ``mei``), activated on first use. A
lab declares, in its own schema, a trained-ensemble table and an MEI table from the templates here, and an
objective table with ``get_objective(model, key)`` (see the seed document).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datajoint as dj
from torch import Tensor, nn

from . import codecs, policy  # noqa: F401 - codecs registers <torch>
from .batching import batch_size_for, generate_many
from .config import validate_method
from .database import ActivatesSchema, LazySchema, PartsPerSubclass, store_name
from .hashing import hash_list_of_dictionaries, make_hash
from .import_utils import import_object
from .model_cache import models
from .modules import EnsembleModel

# The seed document's objective table puts `neuron_id` into the key of a Computed table.
dj.config.jobs.allow_new_pk_fields_in_computed_tables = True

schema = LazySchema("MEI_SCHEMA", "mei")
store_name()


@schema
class MEIMethod(ActivatesSchema, dj.Lookup):
    definition = """
    # methods of MEI generation: a method function and its configuration
    method_fn : varchar(64)            # dotted path of the method function
    method_hash : varchar(32)          # hash of the method configuration
    ---
    method_config : <blob>             # the configuration passed to the method function
    method_ts = CURRENT_TIMESTAMP : datetime
    method_comment = '' : varchar(256)
    """

    def add_method(
        self, method_fn: str, method_config: Mapping[str, Any], comment: str = "", skip_duplicates: bool = False
    ) -> dict[str, str]:
        """Adds a method and returns its key. The function must import and the config must be valid for it."""
        validate_method(method_fn, method_config)
        key = {"method_fn": method_fn, "method_hash": make_hash(method_config)}
        if self & key:
            if skip_duplicates:
                return key
            raise ValueError(f"this method is already in MEIMethod: {key}; pass skip_duplicates=True to reuse it")
        self.insert1(dict(key, method_config=dict(method_config), method_comment=comment))
        return key

    def generate_mei(self, dataloaders: Any, model: nn.Module, key: Mapping[str, Any], seed: int) -> dict:
        """Runs the method of ``key`` and returns the row to insert: the key with ``mei``, ``score``, ``output``."""
        method_fn, method_config = (self & key).fetch1("method_fn", "method_config")
        with policy.enforced():
            mei, score, output = import_object(method_fn)(dataloaders, model, method_config, seed)
        return dict(key, mei=mei, score=float(score), output=output)


@schema
class MEISeed(ActivatesSchema, dj.Lookup):
    definition = """
    # seeds of MEI generation
    mei_seed : int32
    """


class TrainedEnsembleModelTemplate(PartsPerSubclass, dj.Manual):
    """Ensembles of trained models; set ``dataset_table`` and ``trained_model_table`` in the subclass."""

    dataset_table: Any = None
    trained_model_table: Any = None

    definition = """
    # ensembles of models trained on one dataset
    -> self.dataset_table
    ensemble_hash : char(32)           # hash of the members' primary keys
    ---
    ensemble_comment = '' : varchar(256)
    """

    class Member(dj.Part):
        definition = """
        # the trained models of an ensemble
        -> master
        -> master.trained_model_table
        """

    def create_ensemble(self, key: Mapping[str, Any] | str | None = None, comment: str = "") -> dict[str, Any]:
        """Creates the ensemble of all trained models matching ``key``; returns its key."""
        key = {} if key is None else key
        datasets = (self.dataset_table & key).keys()
        if len(datasets) != 1:
            raise ValueError("Provided key not sufficient to restrict dataset table to one entry!")
        members = (self.trained_model_table & datasets[0] & key).keys()
        if not members:
            raise ValueError(f"no trained models match {key!r}: an ensemble needs at least one member")
        master = dict(datasets[0], ensemble_hash=hash_list_of_dictionaries(members))
        with self.connection.transaction:
            self.insert1(dict(master, ensemble_comment=comment))
            self.Member.insert([{**member, **master} for member in members])
        return master

    def load_model(self, key: Mapping[str, Any] | None = None) -> tuple[Any, EnsembleModel]:
        """``(dataloaders, EnsembleModel)`` of the one ensemble ``key`` restricts to."""
        ensemble = (self & (key or {})).keys()
        if len(ensemble) != 1:
            raise ValueError(f"key {key!r} must restrict {type(self).__name__} to one ensemble, found {len(ensemble)}")
        member_keys = (self.trained_model_table & (self.Member & ensemble[0])).keys()
        loaded = [self.trained_model_table().load_model(member) for member in member_keys]
        return loaded[0][0], EnsembleModel(*(model for _, model in loaded))


class MEITemplate(dj.Computed):
    """MEIs, one per method, trained model, objective and seed; set ``trained_model_table`` and
    ``objective_table`` (or the later names ``selector_table`` with ``get_output_selected_model``).

    ``mei`` and ``output`` are kept in the external store ``MEI_STORE``; fetching returns the tensor and the
    output object. The generation runs outside the database transaction (``make_compute``).
    """

    method_table: Any = MEIMethod
    seed_table: Any = MEISeed
    trained_model_table: Any = None
    objective_table: Any = None
    selector_table: Any = None

    @property
    def definition(self) -> str:
        objective = "objective_table" if self.objective_table is not None else "selector_table"
        store = store_name()
        return f"""
        # most exciting inputs
        -> self.method_table
        -> self.trained_model_table
        -> self.{objective}
        -> self.seed_table
        ---
        mei : <torch@{store}>       # the MEI (a torch.Tensor)
        score : float64             # how well the generation went, as the method defines it
        output : <torch@{store}>    # what the method returned besides (e.g. the tracked objectives)
        """

    def objective_model(self, model: nn.Module, key: Mapping[str, Any]) -> nn.Module:
        if self.objective_table is not None:
            return self.objective_table().get_objective(model, key)
        return self.selector_table().get_output_selected_model(model, key)

    def load_model(self, key: Mapping[str, Any]) -> tuple[Any, nn.Module]:
        """The key's trained model, from this process's cache."""
        table = self.trained_model_table()
        model_key = {name: key[name] for name in table.primary_key}
        cache_key = (table.full_table_name, tuple(sorted(model_key.items())))
        return models.get(cache_key, lambda: table.load_model(key=model_key))

    def make_fetch(self, key: dict) -> tuple:
        return ((self.seed_table & key).fetch1("mei_seed"),)

    def make_compute(self, key: dict, seed: int) -> tuple[Tensor, float, Any]:
        with policy.enforced():
            dataloaders, model = self.load_model(key)
            row = self.method_table().generate_mei(dataloaders, self.objective_model(model, key), key, seed)
        return row["mei"], row["score"], row["output"]

    def make_compute_many(
        self,
        keys: Sequence[dict],
        fetched: Sequence[tuple],
        *,
        interrupts: tuple[type[BaseException], ...] = (),
    ) -> Iterator[tuple[int, tuple[Tensor, float, Any] | Exception]]:
        """``make_compute`` for many keys, batched per trained model and method where that is exact.

        Yields ``(i, (mei, score, output))`` for ``keys[i]`` as it finishes, or ``(i, error)`` for a key that
        failed (the others go on). ``fetched[i]`` is what ``make_fetch(keys[i])`` returned. Exceptions of the
        types in ``interrupts`` propagate. A table that overrides ``make_fetch`` or ``make_compute``, or whose
        method table overrides ``generate_mei``, is computed key by key through its ``make_compute``, as
        ``populate()`` would. Paths in rows are checked against ``mei.policy``'s allow-list.
        """
        return policy.enforced_steps(self._compute_many(keys, fetched, interrupts))

    def _compute_many(
        self, keys: Sequence[dict], fetched: Sequence[tuple], interrupts: tuple[type[BaseException], ...]
    ) -> Iterator[tuple[int, tuple[Tensor, float, Any] | Exception]]:
        if not self._generates_as_template():
            for index, key in enumerate(keys):
                try:
                    yield index, self.make_compute(dict(key), *fetched[index])
                except interrupts:
                    raise
                except Exception as error:
                    yield index, error
            return
        groups: dict[tuple, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(tuple(key[name] for name in self.batch_attributes), []).append(index)
        for indices in groups.values():
            yield from self._compute_group(keys, fetched, indices, interrupts)

    @property
    def batch_attributes(self) -> tuple[str, ...]:
        """The attributes keys must share to be generated in one batch: one trained model, one method."""
        return (*self.trained_model_table().primary_key, *self.method_table().primary_key)

    def batch_size(self, key: Mapping[str, Any]) -> int:
        """How many keys like ``key`` (its trained model and method) this process generates in one batch: 1 for
        a table that computes key by key, else ``mei.batching.batch_size_for`` (the model loaded from the
        process's cache, as generating it will)."""
        if not self._generates_as_template():
            return 1
        with policy.enforced():
            dataloaders, model = self.load_model(key)
            method_fn, method_config = (self.method_table & key).fetch1("method_fn", "method_config")
            return batch_size_for(dataloaders, self.objective_model(model, key), method_fn, method_config)

    def _generates_as_template(self) -> bool:
        cls = type(self)
        return (
            cls.make_fetch is MEITemplate.make_fetch
            and cls.make_compute is MEITemplate.make_compute
            and self.method_table.generate_mei is MEIMethod.generate_mei
        )

    def _compute_group(
        self,
        keys: Sequence[dict],
        fetched: Sequence[tuple],
        indices: list[int],
        interrupts: tuple[type[BaseException], ...],
    ) -> Iterator[tuple[int, tuple[Tensor, float, Any] | Exception]]:
        objectives, ready = [], []
        try:
            dataloaders, model = self.load_model(keys[indices[0]])
            method_fn, method_config = (self.method_table & keys[indices[0]]).fetch1("method_fn", "method_config")
        except interrupts:
            raise
        except Exception as error:
            yield from ((index, error) for index in indices)
            return
        for index in indices:
            try:
                objectives.append(self.objective_model(model, keys[index]))
            except interrupts:
                raise
            except Exception as error:
                yield index, error
            else:
                ready.append(index)
        seeds = [fetched[index][0] for index in ready]
        outcomes = generate_many(dataloaders, objectives, method_fn, method_config, seeds, interrupts=interrupts)
        for position, outcome in outcomes:
            if isinstance(outcome, Exception):
                yield ready[position], outcome
            else:
                mei, score, output = outcome
                yield ready[position], (mei, float(score), output)

    def make_insert(self, key: dict, mei: Tensor, score: float, output: Any) -> None:
        self.insert1(dict(key, mei=mei, score=score, output=output))
