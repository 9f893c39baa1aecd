"""MLflow on the stage side (a run per stage, the Tracker), the champion gate, and a stage's recorded outcome."""
