"""Pipeline stages, one module per stage: ingest, dedupe, label, dataset, finetune, evalgate, publish."""
