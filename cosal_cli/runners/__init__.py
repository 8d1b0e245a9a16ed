"""Runners: how groups reach a method and their maps reach the disk.

A runner takes discovered groups and writes ``<output>/<group>/<stem>.png``. Each group goes through
the same pure function (:func:`cosal_cli.runners.group.process_group`) over the one inference path
(:mod:`cosal_cli.inference`); runners differ only in where that runs. :mod:`~cosal_cli.runners.local`
runs it here, decoding one group ahead in a thread. All report through the same
:class:`~cosal_cli.runners.summary.Summary`.
"""
