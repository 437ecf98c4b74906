"""NVIDIA DIGITS' pieces on caffelike: image-classification datasets and their sources (`dataset`, `sources`),
the model files DIGITS writes (`model_files`), classifying one image (`classify`) and its visual report
(`report`, `pictures`), and training curves (`curves`)."""
