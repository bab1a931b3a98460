"""`python -m locus_mcp`: the same as the `locus-mcp` command."""

import sys

from locus_mcp.cli import main

sys.exit(main())
