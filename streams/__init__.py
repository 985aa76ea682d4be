"""What travels: event models, codecs, topic specs, the DLQ and the Faust app factory."""
