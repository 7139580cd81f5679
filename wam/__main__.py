from wam.cli import main

raise SystemExit(main())
