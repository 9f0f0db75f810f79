from lingoloop.client.cli import main

raise SystemExit(main())
