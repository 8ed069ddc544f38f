"""The image classifier: preprocessing, the timm model, the dynamic batcher."""
