"""The stream processing: the fold stage, window buckets, Faust agents and tables, snapshots."""
