"""``python -m agent.demo``: the demo line (see ``agent.demo.main``)."""

from agent.demo.main import main

if __name__ == "__main__":
    raise SystemExit(main())
