"""Reports people read: the daily cross-channel sheet, the weekly review against targets, their charts."""
