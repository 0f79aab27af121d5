"""Pipeline stages, one module (or package) per stage: ingest, dedupe, label, dataset, finetune, evalgate, publish, environment."""

# Importing tinygpt.runtime preloads the optimized BLAS before any stage imports mlx;
# once mlx is loaded its BLAS symbols are bound for the life of the process.
import tinygpt.runtime  # noqa: F401
