"""Deleting store objects that no row references, seeing the framework's ``<torch@store>`` columns.

DataJoint's collector (``dj.gc.GarbageCollector``) recognises only its own hash-addressed types; the
``<torch@store>`` columns that hold MEIs, outputs and trained models are invisible to it, so it counts every
one of them as unreferenced. ``GarbageCollector`` here is DataJoint's, with those columns added. A table it
cannot read makes it fail rather than count that table's objects as unreferenced.

    from mei.garbage import GarbageCollector
    report = GarbageCollector(lab_schema, mei_schema, fabrik_schema, store="mei").collect(dry_run=True)
"""

from __future__ import annotations

import datajoint as dj

from .codecs import TorchCodec


class GarbageCollector(dj.gc.GarbageCollector):
    def hash_references(self, verbose: bool = False) -> set[str]:
        return super().hash_references(verbose) | self.torch_references()

    def torch_references(self) -> set[str]:
        """Store paths of the objects that ``<torch@store>`` columns of this collector's schemas reference."""
        referenced: set[str] = set()
        for schema in self.schemas:
            for table_name in schema.list_tables():
                table = schema.get_table(table_name)
                for name, attribute in table.heading.attributes.items():
                    if not (isinstance(attribute.codec, TorchCodec) and attribute.store is not None):
                        continue
                    for row in table.proj(name).cursor(as_dict=True):
                        for path, store in attribute.codec.referenced_paths(row[name]):
                            if self.store is None or store == self.store:
                                referenced.add(path)
        return referenced
