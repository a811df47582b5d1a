"""Message contracts shared by every service: Avro schemas, dataclasses, codec, topics."""
