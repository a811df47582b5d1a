"""The course processor: decides every command on course-commands into at most one event.

Run a worker with `python -m course_processor` (see __main__.py for the settings).
Three wings, each importing only the ones below it (`make lint` checks it):

* `deciding/`: pure, no faust and no Kafka client. **`deciding/domain.py` decides a
  sign-up** (`decide_signup`) and a course creation; `handler.py` reads the tables,
  plans the event and the table changes, and applies them (get, decide, put);
  `values.py` says what the tables hold; `commands.py` reads a command record.
* `state/`: the tables on local disk, exactly the committed state: RocksDB with
  staged writes (`local.py`), the restore on assignment (`restore.py`), the rebuild
  from course-events (`migrate.py`), and the `StateRuntime` that owns them
  (`runtime.py`).
* `faust_eos/`: the only modules that import faust. The app (`app.py`), its tables'
  store (`tables.py`), exactly_once repaired (`transactions.py`, `recovery.py`), the
  agent (`agents.py`) and the HTTP pages (`web.py`); each adapter is given the
  StateRuntime in its constructor.

At the top: the entry point (`__main__.py`), the composition root (`bootstrap.py`),
and settings, metrics, logs and start-up checks (`admin.py`).
"""
