"""The running agent's local socket: how `hearth chat/embed/translate/peers` reach it.

A Unix socket in the device's mesh state directory (0700), itself 0600, and every connection's peer
credentials must be this user's: only the owner of the agent can use it. One JSON request per
connection, answered with JSON lines (pydantic models both ways, bounded in size and number of
connections). The CLI thereby never opens the agent's state while it runs: one process, one send
counter, one replay window.

    client                                   agent
    {"op": "generate", "request": {...}} ->
                                         <-  {"event": "route", "reason", "lines"}
                                         <-  {"event": "chunk", "chunk": {...}}   (streamed)
                                         <-  {"event": "done", "served_by", "hops", "stats"}
    {"op": "embed" | "translate", ...}   ->
                                         <-  {"event": "result", "result": {...}, "served_by"}
    {"op": "peers", "wait_s"}            ->
                                         <-  {"event": "peers", "report": {...}}
    {"op": "correct" | "withdraw" | "corrections", ...} ->
                                         <-  {"event": "corrections", "records": [...]}
    {"op": "pull", "models"}             ->
                                         <-  {"event": "progress", "updates": [...]}   (as it goes)
                                         <-  {"event": "pulled", "outcomes": [...]}
    any failure                          <-  {"event": "error", "kind", "message", "exit_code"}
"""

from edge_agent.local_api.client import LocalClient, RemoteAnswer
from edge_agent.local_api.server import LocalApiServer

__all__ = ["LocalApiServer", "LocalClient", "RemoteAnswer"]
