"""``kestrel agent wheel``: the wheel hosts install the agent from.

The agent itself runs as ``kestrel-agent`` (engine_lib.agent.__main__), a console
script of its own, so a host loads only the agent and the protocol package.
"""

from __future__ import annotations


def agent_wheel(args) -> int:
    from engine_lib.wheel import build_agent_wheel

    print(build_agent_wheel(args.out))
    return 0
