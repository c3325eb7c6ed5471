"""Recognising known people: a gallery of embeddings from people/, matching with a threshold,
frame sources, tracking between detections and drawing. Open gallery.py, then tracking.py."""
