"""Redis + RQ: connection, embedded redis-server, job payloads and the stage graph."""
