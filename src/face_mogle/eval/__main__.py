"""`python -m face_mogle.eval ...` — see face_mogle.eval.cli."""

from face_mogle.eval.cli import main

raise SystemExit(main())
