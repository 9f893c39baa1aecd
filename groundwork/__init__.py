"""The library the pipeline's stages (tasks/) share: params, data, models, training, compression, evaluation and
tracking, each a subpackage named for what it holds. Nothing here imports a stage, Prefect, or runs at import."""
