"""The read model in PostgreSQL: views, consumed offsets, shadow copies and their swap.

Tables (migrations 0001 and 0002):
- `signup_decisions`: the decision per sign-up id.
- `course_stats`: per course its title, lecturer, capacity and the aggregate of its
  accepted sign-ups' birth dates (count = `enrolled`, sum of ordinals, min, max).
- `global_stats`: the same aggregate over every course, in one row.
- `course_birth_dates`, `global_birth_dates` (migration 0003): accepted sign-ups per
  birth date, per course and overall, from which the age distribution at any date
  follows.
- `projection_offsets`: per projection and topic-partition, the next offset to read.
- `projection_generations`: bumped by every swap; see `apply` and `projections.replay`.
- `course_births_pending_shadow`: a replay's appended birth dates, one unlogged part per
  partition of the event log, without an index, until `merge_births` groups them into
  the shadow copies (`shadow`).

Which index serves which query (there are no others: nothing filters on another
column, and every extra index would slow the per-batch upserts):
- `signup_decisions_pkey (signup_id)`: GET /signups/{id}, one probe; and the batch's
  `INSERT ... ON CONFLICT DO NOTHING RETURNING`, which tells new decisions from repeats.
- `course_stats_pkey (course_id)`: GET /courses/{id}/stats, one probe; and the batch's
  upserts of courses and per-course deltas.
- `global_stats_pkey (id)`: the single row of GET /stats and of the batch's update.
- `course_birth_dates_pkey (course_id, dob)`: one course's counts as one index range
  (a course's stats, a page of courses, the query API's refresh of changed courses), and
  the batch's upserts. `global_birth_dates_pkey (dob)`: the batch's upserts.
- `projection_offsets_pkey (projection, topic, partition)`: positions read on partition
  assignment and written by every batch.
- `projection_generations_pkey (projection)`: the generation row locked by every batch.

Every change is a delta: a batch never reads or recomputes over all enrollments.

Change notices: a live batch ends with NOTIFY on `CHANGES_CHANNEL` naming the courses it
changed (several notices when they do not fit in one payload), and a swap with one
notice holding `EVERYTHING`. PostgreSQL delivers them at commit, in commit order, and
never for a transaction that rolled back; the query API's cache (`projections.live`)
refreshes what they name.

Modules: `positions` (offsets and generations), `views` (the tables and one batch's
writes, `apply`), `shadow` (a replay's copies and the swap), `queries` (the query API's
reads). This package re-exports what the services use, so callers write `store.apply`.
"""

from projections.store.positions import (
    REPLAY_FRESH_SECONDS,
    REPLAY_PROGRESS,
    bump_generation,
    end_replay,
    ensure_generation,
    read_generation,
    read_positions,
    record_replay,
    replay_progress,
    start_replay,
    store_positions,
)
from projections.store.queries import (
    DecisionView,
    fetch_course,
    fetch_courses,
    fetch_decision,
    fetch_everything,
    fetch_global,
    fetch_page,
    read_everything,
)
from projections.store.shadow import (
    BIRTHS_PENDING,
    apply_staged,
    create_shadow,
    drop_shadow,
    failures_since,
    fill_globals,
    merge_births,
    prepare_staging,
    set_logged,
    shadow_exists,
    swap,
    wait_out_maintenance,
)
from projections.store.views import (
    CHANGES_CHANNEL,
    EVERYTHING,
    SHADOW_SUFFIX,
    VIEWS,
    Applied,
    Stale,
    Target,
    apply,
    fill_global_birth_dates,
    live,
    notice_payloads,
    notify,
    shadow,
)

__all__ = [
    "Applied", "BIRTHS_PENDING", "CHANGES_CHANNEL", "DecisionView", "EVERYTHING",
    "REPLAY_FRESH_SECONDS",
    "REPLAY_PROGRESS", "SHADOW_SUFFIX", "Stale", "Target", "VIEWS", "apply", "apply_staged",
    "bump_generation", "create_shadow", "drop_shadow", "end_replay", "ensure_generation",
    "failures_since", "fetch_course", "fetch_courses", "fetch_decision", "fetch_everything",
    "fetch_global", "fetch_page", "fill_global_birth_dates", "fill_globals", "live", "merge_births",
    "notice_payloads", "notify", "prepare_staging", "read_everything", "read_generation",
    "read_positions",
    "record_replay", "replay_progress", "set_logged", "shadow", "shadow_exists", "start_replay",
    "store_positions", "swap", "wait_out_maintenance",
]
