"""Protocol codecs and vendor drivers. Pure: no sockets, no clock, no database."""
