from matmeta.cli.main import main

raise SystemExit(main())
