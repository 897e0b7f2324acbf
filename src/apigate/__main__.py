from apigate.cli import main

raise SystemExit(main())
