"""What the engine and the host agent both speak.

Statuses, device aliases, the agent's port and API prefix, host placeholders,
the domain metadata, convergence policies, storage export syntax, the typed
errors that cross the wire, and how both daemons detach (a locked pidfile, a
readiness report). Standard library only: the agent imports this
package and nothing else of engine_lib, and the agent wheel ships it.
"""
