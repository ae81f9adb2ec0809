"""The data path: how page bytes get from one host's memory to another's.

Shared-memory rings and descriptor sockets (`shm`, `channel`, `wire_format`),
the sending and receiving ends of a connection (`sender`, `receiver`),
PMigrate's parallel source pipeline with its memory pool and address-space
locks (`pipeline`, `memory_pool`, `range_lock`), and the link shaper with
its token bucket (`link`, `token_bucket`). It moves what it is given;
which pages to send, and when, is a technique's business (agents/techniques/).
"""
