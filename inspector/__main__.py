try:
    from inspector.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads (torch, the sources)
    import sys

    sys.stderr.write("inspector: interrupted\n")
    raise SystemExit(130) from None

raise SystemExit(main())
