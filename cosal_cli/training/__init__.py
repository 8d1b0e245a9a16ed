"""``cosal train``: data, sampling, losses and the training loop for methods' trainable heads."""
