"""The chunk server's wire protocol (docs/api.md), a format like the pack format.

Owns the route templates (`routes`), the one table between `engine.errors` and HTTP status and
JSON error codes, read in both directions (`errors`), and the aiohttp client base every caller
of a dicomvault server shares: counting sockets, TLS, timeouts, error decoding and the retry
policy (`client`). Must not serve HTTP (no `aiohttp.web`), hold tokens beyond a request's
header, or know what any route's handler does: that is `server/`.
"""
