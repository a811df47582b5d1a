"""The command API: validates HTTP commands and stores them durably in Kafka."""
