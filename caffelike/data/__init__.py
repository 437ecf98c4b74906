"""The data pipeline: Datum records and images (`datum`), LMDB writing (`dbwriter`), Caffe's DataTransformer
and mean files (`transformer`), batches prepared ahead by worker threads (`prefetch`), and the 5,000 MNIST
digits bundled with caffelike (`bundled`).  The data layers in `caffelike.layers` read through these."""
