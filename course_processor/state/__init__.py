"""The processor's tables on local disk, their restore and rebuild: no faust."""
