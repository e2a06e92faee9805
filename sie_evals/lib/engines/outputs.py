"""Moved: outputs.py was split into one module per concern. This re-export keeps old imports working
while the importers move (vectors, validation, sie_wire, serialization, local_outputs, muvera,
report_fields; partition_profiles is in sie_evals/defs/evals/profile_partitions.py)."""

from sie_evals.lib.config.weights import package_subfolder
from sie_evals.lib.engines.local_outputs import SPLADE_LOGITS_BUDGET, encode_local, local_model_class
from sie_evals.lib.engines.muvera import muvera_fde, postprocess
from sie_evals.lib.engines.report_fields import describe, perf_fields
from sie_evals.lib.engines.serialization import dump, dump_to, load, load_file
from sie_evals.lib.engines.sie_wire import parse_sie_items, sparse_from_items, vocab_size
from sie_evals.lib.engines.validation import (
    check_engine_supports,
    check_multivector,
    check_sparse,
    validate_output,
)
from sie_evals.lib.engines.vectors import (
    MultiVectors,
    MuveraVectors,
    Output,
    SparseVectors,
    concat,
    item_cosines,
    output_type_of,
    similarity,
)

__all__ = [
    "SPLADE_LOGITS_BUDGET",
    "MultiVectors",
    "MuveraVectors",
    "Output",
    "SparseVectors",
    "check_engine_supports",
    "check_multivector",
    "check_sparse",
    "concat",
    "describe",
    "dump",
    "dump_to",
    "encode_local",
    "item_cosines",
    "load",
    "load_file",
    "local_model_class",
    "muvera_fde",
    "output_type_of",
    "package_subfolder",
    "parse_sie_items",
    "perf_fields",
    "postprocess",
    "similarity",
    "sparse_from_items",
    "validate_output",
    "vocab_size",
]
