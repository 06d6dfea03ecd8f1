//! ISO 9660 reader (Rock Ridge, Joliet): files out of an ISO image without mounting.
