"""The fault suite: hostile input and faults on the real broker and Redis, each against exact ground truth."""
