"""``python -m tests.mockserver``: run the server process."""

from tests.mockserver.process import main

main()
