"""``bdi-agent doctor``: ``check`` holds the check model and the report, ``run`` the order
in which checks run; ``checks``, ``broker`` and ``rois`` the checks themselves."""
