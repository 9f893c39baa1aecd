"""The model a client calls: requests turned into the input contract inside the model, class and probabilities
out (`classifier`), and what a logged copy of it holds (`package`)."""
