"""English date formats with seconds: an attempt's lease, start and finish are often seconds apart, and the
console (Django's admin) shows stored timestamps in DATETIME_FORMAT. The rest are Django's own."""

DATETIME_FORMAT = "N j, Y, H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
