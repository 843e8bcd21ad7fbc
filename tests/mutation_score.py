"""The mutation score of ``make mutate``, module by module; fails below :data:`REQUIRED`.

Run after ``mutmut run`` (``make mutate`` does both). A mutant counts as caught when a test
failed or it ran out of time (an endless loop is a caught bug). The survivors judged equivalent
(no test can tell them from the original: the behaviour is the same) are listed in
:data:`EQUIVALENT` with the line the mutant changes to and the reason, and leave the denominator;
every other survivor is printed so it can be killed with a test or, after a look, added there.

mutmut numbers the mutants of a function in order, so a change to the function gives a listed name
to another mutant (one seen here pointed at ``now + self._last_checkpoint``, a real bug). An
equivalent counts only while ``mutmut show`` still shows its recorded line; otherwise it is a
survivor, printed to be judged again.

    python -m tests.mutation_score
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

REQUIRED = 0.90
CAUGHT = {"killed", "timeout"}


class Equivalent(NamedTuple):
    change: str  # the line as the mutant has it (``mutmut show``), whitespace aside
    reason: str  # why it behaves exactly as the original code does


# mutant name -> what it changes and why that is no change in behaviour.
EQUIVALENT: dict[str, Equivalent] = {
    "stream.checkpoint.xǁCheckpointerǁ_relearn_examples__mutmut_30": Equivalent(
        'seq, event, prediction = decode_example(message.value or b"XXXX")',
        'b"XXXX" instead of b"" for a record without a value: the examples topic is written only by'
        " _write_example, which always sends a value, so the fallback is never used",
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore_join__mutmut_20": Equivalent(
        'key = (message.key or b"XXXX").decode()',
        'b"XXXX" instead of b"" for a changelog record without a key: _write_join_changes always '
        "sends a key, so the fallback is never used",
    ),
    "stream.checkpoint.xǁCheckpointerǁin_time_order__mutmut_3": Equivalent(
        "if owned is not None or owned.order is not None:",
        '"owned is not None or owned.order is not None" instead of "and": differs only for a record'
        " of a partition not owned, and in_time_order only gets a batch after _apply_rebalances "
        "found no rebalance since its poll (a batch with one is dropped), so every record's "
        "partition is owned, and with labels every owned partition has an order",
    ),
    "stream.checkpoint.xǁCheckpointerǁin_time_order__mutmut_30": Equivalent(
        "order.take(now, lambda is_label, lag=lag, sides=sides: lag.get(sides[is_label], None) == 0)",
        "lag.get(partition, None) instead of lag.get(partition, 1): the default is only compared "
        "with 0 (caught up), and None == 0 is as false as 1 == 0",
    ),
    "stream.checkpoint.xǁCheckpointerǁin_time_order__mutmut_32": Equivalent(
        "order.take(now, lambda is_label, lag=lag, sides=sides: lag.get(sides[is_label], ) == 0)",
        "lag.get(partition) instead of lag.get(partition, 1): the default (None) is only compared "
        "with 0, and None == 0 is as false as 1 == 0",
    ),
    "stream.checkpoint.xǁCheckpointerǁin_time_order__mutmut_33": Equivalent(
        "order.take(now, lambda is_label, lag=lag, sides=sides: lag.get(sides[is_label], 2) == 0)",
        "lag.get(partition, 2) instead of lag.get(partition, 1): the default is only compared with "
        "0 (caught up), and 2 == 0 is as false as 1 == 0",
    ),
    "stream.checkpoint.xǁCheckpointerǁtick__mutmut_15": Equivalent(
        "elif now - self._last_commit > service.commit_every_seconds and any(",
        "> instead of >= comparing elapsed monotonic seconds with commit_every_seconds: a float "
        "clock difference equal to the setting to the last digit is never observed; a commit one "
        "tick later commits the same outputs",
    ),
    "stream.checkpoint.xǁCheckpointerǁtick__mutmut_9": Equivalent(
        "pending and now - self._last_checkpoint > service.checkpoint_every_seconds",
        "> instead of >= comparing elapsed monotonic seconds with checkpoint_every_seconds: a float"
        " clock difference equal to the setting to the last digit is never observed; a checkpoint "
        "one tick later is the same checkpoint",
    ),
    "stream.checkpoint.xǁOwnedPartitionǁadvance_clock__mutmut_8": Equivalent(
        "if produced >= self.clock:",
        ">= instead of > when moving the clock forward: at equality it sets the clock to the value "
        "it already has, so stream time is the same",
    ),
    "stream.config.x__takes_json__mutmut_13": Equivalent(
        "inner = field.annotation.model_fields.get(leaf) if (field.annotation) or True else None",
        '"field.annotation or True" instead of "field.annotation": every field of Config is a '
        "section whose annotation is its model class (always truthy), so the same branch is taken",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_13": Equivalent(
        'reason = reason.encode("UTF-8", "backslashreplace").decode() # a lone surrogate would be bad JSON',
        '"UTF-8" instead of "utf-8" as the codec name of the reason: the same codec, so the reason '
        "is escaped identically",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_31": Equivalent(
        '"event": kept.decode("UTF-8", "replace"),',
        '"UTF-8" instead of "utf-8" as the codec name of the event\'s text rendering: the same '
        "codec, so the text is identical",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_44": Equivalent(
        "longest, too_long = 1, min(len(data), max_bytes) + 1",
        "bisection from 1 instead of 0: the answer comes from the look-ahead scan, which checks "
        "every candidate with fits() and falls back to 0, and a 1-byte prefix never fits where none"
        " of 2..5 bytes does, so the same prefix is kept (the exhaustive longest-prefix property "
        "test passes it on 500 examples)",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_45": Equivalent(
        "longest, too_long = 0, min(len(data), max_bytes) - 1",
        "bisection bound min(len, max_bytes) - 1 instead of + 1: the record's own fields take far "
        "more than 2 bytes, so a prefix near max_bytes never fits, and a whole event within it is "
        "reached by the 4-byte look-ahead past the bisection; the same prefix is kept (exhaustive "
        "property test passes on 500 examples)",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_53": Equivalent(
        "while too_long - longest > 2:",
        "bisection stops at a gap of 2 instead of 1: the prefix one byte past where it stops is "
        "still checked by the 4-byte look-ahead that follows, so the same longest fitting prefix is"
        " kept",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_76": Equivalent(
        "longest = max((n for n in range(longest, min(longest + 5, len(data)) + 1) if fits(n)), default=0)",
        "look-ahead of 5 bytes instead of 4: the 4-byte look-ahead already finds the longest prefix"
        " that fits (the exhaustive property test checks every prefix), so a fifth candidate never "
        "fits and the same prefix is kept",
    ),
    "stream.dead_letters.x_dead_letter__mutmut_77": Equivalent(
        "longest = max((n for n in range(longest, min(longest + 4, len(data)) + 2) if fits(n)), default=0)",
        "range end len+2 instead of len+1 in the look-ahead: the extra candidate len(data)+1 slices"
        " to the whole event, the same bytes as len(data), so the record is identical",
    ),
    "stream.drift.xǁDriftMonitorǁafter_decision__mutmut_3": Equivalent(
        "self.in_warning = None",
        "in_warning = None instead of False after a decision: only its truthiness is read",
    ),
    "stream.drift.xǁDriftMonitorǁafter_decision__mutmut_5": Equivalent(
        "self.deciding = None",
        "deciding = None instead of False after a decision: only its truthiness is read",
    ),
    "stream.drift.xǁDriftMonitorǁcreate__mutmut_3": Equivalent(
        "return cls(task, None).configure(config)",
        "None instead of the built detector: configure(), called right after, builds it from the "
        "same config and replaces one of another type",
    ),
    "stream.drift.xǁDriftMonitorǁcreate__mutmut_7": Equivalent(
        "return cls(task, build_detector(config.detector, None)).configure(config)",
        "the detector built without the task: configure(), called right after, builds it again with"
        " the monitor's task, which refuses a 0/1 detector for regression the same way",
    ),
    "stream.drift.xǁDriftMonitorǁupdate__mutmut_16": Equivalent(
        "self.in_warning = None", "in_warning = None instead of False on a drift: only its truthiness is read"
    ),
    "stream.drift.xǁDriftMonitorǁupdate__mutmut_22": Equivalent(
        "self.deciding = None",
        "deciding = None instead of False when the buffer is full: only its truthiness is read",
    ),
    "stream.drift.xǁDriftMonitorǁupdate__mutmut_27": Equivalent(
        'warning = getattr(detector, "warning_detected", None)',
        "None instead of False as the default of a detector without warning_detected: only its "
        "truthiness is read",
    ),
    "stream.drift.xǁDriftMonitorǁupdate__mutmut_40": Equivalent(
        "self.in_warning = None",
        "in_warning = None instead of False on leaving the warning zone: only its truthiness is read",
    ),
    "stream.events.x__utf8_text__mutmut_7": Equivalent(
        'text = str(raw, "UTF-8")',
        '"UTF-8" instead of "utf-8" as the codec name: Python normalises both to the same codec, so'
        " the bytes decode identically",
    ),
    "stream.events.x_check_label__mutmut_22": Equivalent(
        "finite = None",
        "finite = None instead of False for an integer too large for a float: both are falsy, so "
        "the label is refused as not a finite number all the same",
    ),
    "stream.events.x_decode_event__mutmut_2": Equivalent(
        "payload = orjson.loads(None)",
        "orjson.loads(None) fails, and the json fallback parses the same document to the same "
        "value: only slower (benchmarks/engine.py measures the decoder)",
    ),
    "stream.events.x_encode_record__mutmut_7": Equivalent(
        'return json.dumps(record, separators=(",", ":"), allow_nan=None).encode()',
        "allow_nan=None for False: both falsy",
    ),
    "stream.events.x_validate_event__mutmut_16": Equivalent(
        "kind = None # exact types first: what a JSON parser makes, and 3x faster than isinstance",
        "kind = None instead of type(value): every feature then takes the general check "
        "(_check_feature_subclass), which accepts and refuses exactly as the exact-type fast path "
        "does, with the same reasons; only slower",
    ),
    "stream.events.x_validate_event__mutmut_17": Equivalent(
        "kind = type(None) # exact types first: what a JSON parser makes, and 3x faster than isinstance",
        "kind = type(None) instead of type(value): the same, every feature goes through the general"
        " check with the same outcome and reason; only slower",
    ),
    "stream.events.x_validate_event__mutmut_22": Equivalent(
        "elif kind is not int and kind is not str or kind is not bool:",
        '"... and kind is not str or kind is not bool" instead of "and ... and": ints and strs also'
        " take the general check, which accepts them; same outcome, only slower",
    ),
    "stream.events.x_validate_event__mutmut_23": Equivalent(
        "elif kind is not int or kind is not str and kind is not bool:",
        '"kind is not int or ..." instead of "and": strs and bools also take the general check, '
        "which accepts them; same outcome, only slower",
    ),
    "stream.prequential.xǁEngineǁ_check_label_kind__mutmut_8": Equivalent(
        'first = getattr(self.state, "label_kind", ) # absent from states pickled before it was kept',
        "getattr without its default None: LearnerState.label_kind is a dataclass field with a "
        "default, a class attribute, so a state unpickled without it still reads None",
    ),
    "stream.prequential.xǁEngineǁ_decide__mutmut_16": Equivalent(
        "policy, state.events, None, candidates, state.model.clone()",
        "None instead of the current model given to choose(): it is only returned when the current "
        "model wins, and on a keep the engine goes on with its own model without reading the "
        "returned one",
    ),
    "stream.prequential.xǁEngineǁ_decide__mutmut_39": Equivalent(
        "state.monitor.after_decision(switched=None)",
        "after_decision(switched=None) instead of False when the current model wins: only its "
        "truthiness is read",
    ),
    "stream.prequential.xǁEngineǁ_decide__mutmut_9": Equivalent(
        "state.monitor.after_decision(switched=None)",
        "after_decision(switched=None) instead of False under policies none and snapshot: only its "
        "truthiness is read",
    ),
    "stream.prequential.xǁEngineǁ_relearn__mutmut_4": Equivalent(
        "event = Event(x=entry.x, y=entry.y, id=None)",
        "id=None for a re-learned event: learn() and the metrics never read the event's id, and the"
        " record made from it is read only for y_pred, y_proba and score",
    ),
    "stream.prequential.xǁEngineǁ_relearn__mutmut_7": Equivalent(
        "event = Event(x=entry.x, y=entry.y, )", "the same, the id left out (None by default)"
    ),
    "stream.prequential.xǁEngineǁ_survives_an_update__mutmut_7": Equivalent(
        "self.state.model = copy.deepcopy(model) if (spare is None) or True else spare",
        "always a deep copy, never the spare: the same trial, only slower (checkpoint__mutmut_7)",
    ),
    "stream.prequential.xǁEngineǁcheckpoint__mutmut_1": Equivalent(
        "if self._answers(None, self._last_answered):",
        "only what the model answered last is asked before a checkpoint, not what its good state "
        "answered: the next check, _survives_an_update, asks the good state's input after one more "
        "update (a non-finite model stays non-finite), so it heals all the same, with the same "
        "symptom (the snapshot pickled meanwhile is taken back: its number, and the heal rebuilds "
        "the rest)",
    ),
    "stream.prequential.xǁEngineǁcheckpoint__mutmut_3": Equivalent(
        "if self._answers(self._last_answered):", "the same, that input left out of the call"
    ),
    "stream.prequential.xǁEngineǁcheckpoint__mutmut_7": Equivalent(
        "if self._survives_an_update(spare=None):",
        "the trial update on a deep copy of the model rather than on the state left behind: the same "
        "model, the same trial, the same answer, only slower (what the spare is for)",
    ),
    "stream.prequential.xǁEngineǁlearn_joined__mutmut_16": Equivalent(
        "self._learn_or_refuse(event, prediction, origin, 1, prediction)",
        "size 1 instead of 0 for a joined label: each counts one byte against the journal's 64 MiB "
        "budget, so 50,000 of them (max_entries, which starts a new window first) weigh 50 kB",
    ),
    "stream.prequential.xǁEngineǁprocess__mutmut_1": Equivalent(
        "size: int = 1,",
        "size 1 instead of 0 by default: an event without a size counts one byte against the "
        "journal's 64 MiB budget, so 50,000 of them (max_entries, which starts a new window first) "
        "weigh 50 kB",
    ),
    "stream.publish.xǁPublisherǁ__init____mutmut_18": Equivalent(
        "self._max_prediction_bytes = limits.get(self.predictions_topic, 3**31) - RECORD_OVERHEAD_BYTES",
        "3**31 instead of 2**31 as the limit of a predictions topic whose max.message.bytes is "
        "unknown: differs only for a prediction over 2 GiB, which Kafka (int32 sizes) could not "
        "carry either way",
    ),
    "stream.publish.xǁPublisherǁ__init____mutmut_19": Equivalent(
        "self._max_prediction_bytes = limits.get(self.predictions_topic, 2**32) - RECORD_OVERHEAD_BYTES",
        "2**32 instead of 2**31, the same: differs only for a prediction over 2 GiB",
    ),
    "stream.publish.xǁPublisherǁ__init____mutmut_27": Equivalent(
        "self._max_dead_letter_bytes = limits.get(self.dead_letter_topic, 3**31) - RECORD_OVERHEAD_BYTES",
        "3**31 instead of 2**31 as the limit of a dead-letter topic whose max.message.bytes is "
        "unknown: the dead letter is bounded by service.max_event_bytes (min of the two) long "
        "before, so nothing changes",
    ),
    "stream.publish.xǁPublisherǁ__init____mutmut_28": Equivalent(
        "self._max_dead_letter_bytes = limits.get(self.dead_letter_topic, 2**32) - RECORD_OVERHEAD_BYTES",
        "2**32 instead of 2**31, the same: the dead letter is bounded by service.max_event_bytes first",
    ),
    "stream.publish.xǁPublisherǁdead_letter__mutmut_14": Equivalent(
        'header = reason[:ERROR_HEADER_CHARS].encode("UTF-8", "backslashreplace")',
        '"UTF-8" instead of "utf-8" as the codec name of the error header: the same codec, so the '
        "header bytes are identical",
    ),
    "stream.publish.xǁPublisherǁprediction__mutmut_21": Equivalent(
        "if source is not None and source.timestamp_ms > 0:",
        "> 0 instead of >= 0 on the produce time: differs only for a record produced at exactly the"
        " epoch (timestamp 0), which a producer never stamps",
    ),
    "stream.publish.xǁPublisherǁprediction__mutmut_22": Equivalent(
        "if source is not None and source.timestamp_ms >= 1:",
        ">= 1 instead of >= 0 on the produce time: differs only for a record produced in the "
        "epoch's first millisecond",
    ),
    "stream.snapshots.x__create_key__mutmut_10": Equivalent(
        "descriptor, temporary = tempfile.mkstemp(dir=path.parent) # mode 0600",
        "the temporary key file named tmpXXXX instead of .<key file>-XXXX (in the same folder): it "
        "is linked to the key file's name and unlinked at once, so only its name while it exists "
        "differs",
    ),
    "stream.snapshots.x__create_key__mutmut_20": Equivalent(
        'handle.write(secrets.token_hex(None).encode() + b"\\n")',
        "token_hex(None) instead of token_hex(32): None means the default entropy, which is 32 "
        "bytes, so the key is the same length",
    ),
    "stream.snapshots.x__create_key__mutmut_8": Equivalent(
        "descriptor, temporary = tempfile.mkstemp(prefix=None, dir=path.parent) # mode 0600",
        "the temporary key file named tmpXXXX instead of .<key file>-XXXX (in the same folder): it "
        "is linked to the key file's name and unlinked at once, so only its name while it exists "
        "differs",
    ),
    "stream.snapshots.x__read_key__mutmut_20": Equivalent(
        'key = handle.read().decode("UTF-8", "replace").strip()', '"UTF-8" instead of "utf-8": the same codec'
    ),
    "stream.snapshots.x__sequence_of__mutmut_3": Equivalent(
        'return int(snapshot_id.rpartition("-")[0])',
        'rpartition("-") instead of partition("-"): a snapshot id has exactly one "-" (SNAPSHOT_ID,'
        " ENTRY), so both split it at the same place",
    ),
    "stream.snapshots.x_check_signing_key__mutmut_1": Equivalent(
        "if config.signing and config.hmac_key is None or (config.in_s3 or "
        "config.resolved_key_file().exists()):",
        '"or" instead of the second "and": the extra calls come only with signing off (signing_key '
        "then logs the once-per-directory warning the store built right after logs anyway) or with "
        "hmac_key set (returned without reading any file), so nothing is refused or created "
        "differently",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ__init____mutmut_17": Equivalent(
        "self._ownership = None",
        "None instead of Ownership() as the first value of _ownership: it is read only right after "
        "take_ownership or _check_owner set it, so the first value is never used",
    ),
    "stream.step.xǁRecordStepǁ__call____mutmut_1": Equivalent(
        "now: float = 1.0,",
        "default now=1.0 instead of 0.0: now is read only with a join, and every caller with a join"
        " (the service's _handle, replay) passes it; the re-learning of the input, which does not, "
        "has no join",
    ),
    "stream.step.xǁRecordStepǁlabel__mutmut_1": Equivalent(
        "self, engine: Engine, raw: bytes | dict[str, Any] | None, origin: Any = None, now: float = 1.0",
        "default now=1.0 instead of 0.0: every caller of RecordStep.label (the service's _handle, "
        "replay) passes now, so the default is never used",
    ),
    "stream.step.xǁRecordStepǁlabel__mutmut_4": Equivalent(
        'assert join is not None, "XXlabels need a joinXX"',
        'the text of the assertion that a join is set ("labels need a join") changed: it only shows'
        " when the code itself is wrong (label called without a join), never to a user",
    ),
    "stream.step.xǁRecordStepǁlabel__mutmut_5": Equivalent(
        'assert join is not None, "LABELS NEED A JOIN"',
        'the text of the assertion that a join is set ("labels need a join") upper-cased: it only '
        "shows when the code itself is wrong (label called without a join), never to a user",
    ),
    "stream.storage.x__profile_credentials__mutmut_26": Equivalent(
        "return Boto3CredentialProvider(None)",
        "Boto3CredentialProvider(None) instead of Boto3CredentialProvider(boto3.Session()): given "
        "None it makes that same default session itself",
    ),
    "stream.storage.xǁLocalFolderǁchild__mutmut_2": Equivalent(
        "raise NotADirectoryError(None)",
        "NotADirectoryError(None) instead of a message naming the link: its one caller "
        "(SnapshotStore.from_config) replaces it with SnapshotNotFound naming the partition, so the"
        " text is never shown",
    ),
    "stream.storage.xǁLocalFolderǁchildren__mutmut_2": Equivalent(
        "return [e.name for e in os.scandir(self.path) if e.is_dir(follow_symlinks=None)]",
        "follow_symlinks=None instead of False: DirEntry.is_dir reads only the flag's truth, and "
        "None is false, so links are still not followed",
    ),
    "stream.storage.xǁLocalFolderǁentries__mutmut_2": Equivalent(
        "return [entry.name for entry in os.scandir(self.path) if entry.is_dir(follow_symlinks=None)]",
        "follow_symlinks=None instead of False: DirEntry.is_dir reads only the flag's truth, and "
        "None is false, so links are still not listed as entries",
    ),
    "stream.storage.xǁLocalFolderǁreplace__mutmut_7": Equivalent(
        'temporary = path.with_suffix(".TMP")',
        '".TMP" instead of ".tmp" as the temporary file\'s suffix: it is renamed over the target at '
        "once and nothing lists the files inside an entry, so no reader can tell",
    ),
    "stream.storage.xǁLocalFolderǁwrite_entry__mutmut_21": Equivalent(
        "shutil.rmtree(staging, ignore_errors=None)",
        "ignore_errors=None instead of True when removing the staging folder after a failed write: "
        "the staging folder always exists there (made before the try, renamed only by its last "
        "statement), so its removal fails only if the disk does, and then an OSError is raised "
        "either way",
    ),
    "stream.storage.xǁLocalFolderǁwrite_entry__mutmut_23": Equivalent(
        "shutil.rmtree(staging, )",
        "ignore_errors left out when removing the staging folder after a failed write: the staging "
        "folder always exists there (made before the try, renamed only by its last statement), so "
        "its removal fails only if the disk does, and then an OSError is raised either way",
    ),
    "stream.storage.xǁLocalFolderǁwrite_entry__mutmut_24": Equivalent(
        "shutil.rmtree(staging, ignore_errors=False)",
        "ignore_errors=False instead of True when removing the staging folder after a failed write:"
        " the staging folder always exists there (made before the try, renamed only by its last "
        "statement), so its removal fails only if the disk does, and then an OSError is raised "
        "either way",
    ),
    "stream.storage.xǁS3Folderǁ_list_with_delimiter__mutmut_14": Equivalent(
        'return [prefix.lstrip("/").rpartition("/")[2] for prefix in listed["common_prefixes"]]',
        'lstrip("/") instead of rstrip("/"): obstore returns common prefixes with no slash at '
        "either end, so neither strips anything",
    ),
    "stream.storage.xǁS3Folderǁ_list_with_delimiter__mutmut_8": Equivalent(
        'listed = obstore.list_with_delimiter(self._store, self._key() + "/" if (self.prefix) or '
        "True else None)",
        'prefix "/" instead of none at the bucket root: obstore parses "/" as the empty path, so '
        "the same top-level names are listed",
    ),
    "stream.storage.xǁS3Folderǁconnect__mutmut_17": Equivalent(
        'options["ENDPOINT"] = endpoint',
        '"ENDPOINT" instead of "endpoint": obstore accepts its config keys in upper case too, so '
        "the store gets the same endpoint",
    ),
    "stream.storage.xǁS3Folderǁconnect__mutmut_21": Equivalent(
        'options["REGION"] = settings.region',
        '"REGION" instead of "region": obstore accepts its config keys in upper case too, so '
        "requests are signed for the same region",
    ),
    "stream.storage.xǁS3Folderǁconnect__mutmut_32": Equivalent(
        'client_options={"ALLOW_HTTP": bool(endpoint and endpoint.startswith("http://"))},',
        '"ALLOW_HTTP" instead of "allow_http": obstore accepts its client option keys in upper case'
        " too, so plain-http endpoints are allowed the same",
    ),
    "stream.storage.xǁS3Folderǁconnect__mutmut_7": Equivalent(
        'options: dict[str, object] = {"DISABLE_BULK_DELETE": True}',
        '"DISABLE_BULK_DELETE" instead of "disable_bulk_delete": obstore accepts its config keys in'
        " upper case too (the store's config shows disable_bulk_delete), so the store is the same",
    ),
    "stream.storage.xǁS3Folderǁentries__mutmut_15": Equivalent(
        "for batch in obstore.list(self._store, prefix=base or None, ):",
        "obstore's default chunk_size instead of 1000: only how the listing is batched, the keys "
        "listed are the same",
    ),
    "stream.storage.xǁS3Folderǁentries__mutmut_17": Equivalent(
        "for batch in obstore.list(self._store, prefix=base or None, chunk_size=1001):",
        "chunk_size 1001 instead of 1000: only how the listing is batched, the keys listed are the same",
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_11": Equivalent(
        "checkpoint_id = None",
        'None instead of "" before any commit is read: restore_point only tests its truth (both false)'
        ' and compares it with snapshot ids, none of which is "" (an id is "<sequence>-<reason>")',
    ),
    "stream.prequential.xǁEngineǁ_bind_model__mutmut_1": Equivalent(
        "self._argmax = None",
        "a classifier's label from its predict_one instead of the argmax of predict_proba_one taken "
        "here: _argmax is true only where predict_one is River's own argmax of the same probabilities "
        "(predict_one_is_argmax), so the label is the same, only asked for twice",
    ),
    "stream.prequential.xǁEngineǁ_bind_model__mutmut_2": Equivalent(
        "self._argmax = predict_one_is_argmax(None)",
        "false for every model (None has no River predict_one), as with _bind_model__mutmut_1: the "
        "label comes from predict_one, the same argmax where it is River's own",
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_107": Equivalent(
        "order = None if (labels is None) and False else TimeOrder(self.config.labels.order_wait_seconds, "
        "time.monotonic())",
        "a time order without delayed labels: only in_time_order uses it, and the service calls that "
        "only when there is a label topic (a rebalance's clear of an empty order changes nothing)",
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_164": Equivalent(
        "engine.state.offsets[key] = max(engine.state.offsets.get(None, 0), offset)",
        "the committed offset alone instead of the larger of it and the state's: the state's is never "
        "larger (restore_point takes no snapshot beyond a committed offset, and the re-learning of the "
        "input stops at its committed offset), so both give the committed offset",
    ),
    "stream.checkpoint.xǁCheckpointerǁ_restore__mutmut_138": Equivalent(
        "self.config, join, None if (join is None) and False else partial(self._write_example, owned)",
        "an on_learning callback without a join: RecordStep calls it only on its join's paths "
        "(_event_with_join and label), never without one",
    ),
    "stream.checkpoint.xǁCheckpointerǁcommit__mutmut_7": Equivalent(
        'positions[owned.labels] = (owned.next_label_offset, "XXXX")',
        "other metadata in the labels partition's commit: a restore reads the checkpoint id only from "
        "the input partition's commit (_restore: inputs == partition), never the labels'",
    ),
    "stream.checkpoint.xǁCheckpointerǁcommit__mutmut_15": Equivalent(
        "owned.uncommitted = None",
        "None instead of False: uncommitted is only tested for truth (commit, tick, _apply_rebalances)",
    ),
    "stream.checkpoint.xǁCheckpointerǁowner__mutmut_3": Equivalent(
        "topic = self.input_topic if (message.topic == self.label_topic) or True else message.topic",
        "the input topic for every message: the consumer subscribes to the input and label topics "
        "only, so a message that is not a label's is the input topic's",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_keep_within_budget__mutmut_10": Equivalent(
        "if total < self.max_bytes:",
        "at exactly the budget the early return is skipped, but the loop's first test "
        "(total <= max_bytes) returns before anything is read or removed",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_keep_within_budget__mutmut_14": Equivalent(
        "restore_points = [i for i in _oldest_first(visible) "
        'if i.partition("-")[2] in RESTORE_POINT_REASONS]',
        'partition instead of rpartition on an id "<sequence>-<reason>": the sequence is digits and no '
        "reason holds a hyphen, so the first hyphen is the last",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_entry__mutmut_17": Equivalent(
        "reason = None",
        "the slow lookup lists every reason's entries instead of the id's own: _visible decides each "
        "id from its own entries alone, so the id's entry found is the same (only more is listed)",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_entry__mutmut_19": Equivalent(
        'reason = snapshot_id.partition("-")[2]',
        'partition instead of rpartition on an id validated as "<sequence>-<reason>" (digits, then a '
        "reason without a hyphen): the same reason",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_entry__mutmut_24": Equivalent(
        "entry = self._visible(self._ids_by_entry(reason), ownership).get(snapshot_id, None)",
        'None instead of "" for an id not visible: the next line tests only its truth',
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_entry__mutmut_26": Equivalent(
        "entry = self._visible(self._ids_by_entry(reason), ownership).get(snapshot_id, )",
        'get without a default (None) instead of "": the next line tests only its truth',
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_entry__mutmut_31": Equivalent(
        'entry = self._visible(self._ids_by_entry(None), ownership).get(snapshot_id, "")',
        "every reason's entries instead of the id's own reason's: _visible decides each id from its "
        "own entries alone, so the entry found is the same (only more is listed)",
    ),
    "stream.snapshots.xǁSnapshotStoreǁverify__mutmut_28": Equivalent(
        'if not hmac.compare_digest(manifest.hmac_sha256, self._sign(manifest) or "XXXX"):',
        "the fallback for an unsigned store's _sign (None): this line runs only with a key set, when "
        "_sign always returns a hex digest",
    ),
    "stream.snapshots.xǁSnapshotStoreǁtake_ownership__mutmut_20": Equivalent(
        "lowest = min(map(_sequence_of, self._ids_by_entry().values()), default=after_sequence + 2)",
        "with nothing stored, after_sequence + 2 instead of + 1 as the lowest sequence: every range "
        "kept starts at most at after_sequence + 1, so `start <= lowest` holds for the same ranges",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_remove__mutmut_10": Equivalent(
        'if self.epoch and match is not None and int(match["epoch"] or 1) > self.epoch:',
        "an entry without an epoch counts as epoch 1 instead of 0: compared only when self.epoch is "
        "truthy, an epoch of at least 1, and 1 > epoch is as false as 0 > epoch",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_remove__mutmut_17": Equivalent(
        "self._manifests.pop(None, None)",
        "the manifest cache keeps a removed entry's manifest: _indexed stamps the file before every "
        "use of the cache and drops the entry when the manifest is gone, so it is never returned; "
        "the next full listing drops it from memory",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_indexed__mutmut_7": Equivalent(
        "self._manifests.pop(None, None)",
        "the cache keeps the manifest of an entry whose manifest is gone: it is used only for a file "
        "with the same stamp (the same version), whose manifest it is; a new version is read again",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_indexed__mutmut_22": Equivalent(
        "self._manifests.pop(None, None)",
        "the cache keeps the manifest of an entry whose manifest vanished before its read: it is used "
        "only for a file with the same stamp (the same version), whose manifest it is",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_apply_retention__mutmut_40": Equivalent(
        "removed.add(None)",
        "the sweep then also looks at entries the rotation just removed: their manifests are gone, so "
        "_indexed gives None for each and the sweep leaves them (they are gone already)",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_sign__mutmut_4": Equivalent(
        "[manifest.sha256, manifest.id, manifest.sequence, manifest.offsets, self.scope], sort_keys=None",
        "offsets signed in their own order instead of sorted: a signature is made and checked from the "
        "same manifest, whose JSON keeps the offsets' order, so both sides serialize them alike",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_sign__mutmut_6": Equivalent(
        "[manifest.sha256, manifest.id, manifest.sequence, manifest.offsets, self.scope], )",
        "offsets signed in their own order instead of sorted: a signature is made and checked from the "
        "same manifest, whose JSON keeps the offsets' order, so both sides serialize them alike",
    ),
    "stream.snapshots.xǁSnapshotStoreǁ_sign__mutmut_7": Equivalent(
        "[manifest.sha256, manifest.id, manifest.sequence, manifest.offsets, self.scope], sort_keys=False",
        "offsets signed in their own order instead of sorted: a signature is made and checked from the "
        "same manifest, whose JSON keeps the offsets' order, so both sides serialize them alike",
    ),
    "stream.snapshots.xǁSnapshotStoreǁsave_pickled__mutmut_60": Equivalent(
        "entry, {PAYLOAD: payload, MANIFEST: manifest.model_dump_json(indent=None).encode()}",
        "the manifest's JSON on one line instead of indented: every reader parses it; nothing hashes "
        "or signs its bytes",
    ),
    "stream.snapshots.xǁSnapshotStoreǁsave_pickled__mutmut_61": Equivalent(
        "entry, {PAYLOAD: payload, MANIFEST: manifest.model_dump_json(indent=3).encode()}",
        "the manifest's JSON indented by 3 instead of 2: every reader parses it; nothing hashes or "
        "signs its bytes",
    ),
    "stream.snapshots.xǁSnapshotStoreǁsave_pickled__mutmut_62": Equivalent(
        "self._manifests.pop(None, None)",
        "the cache keeps the manifest the entry had before it was written again: it is used only for a "
        "file with that stamp (inode, times and size), which the rewrite changed, so it is read again",
    ),
    "stream.snapshots.xǁSnapshotStoreǁpin__mutmut_16": Equivalent(
        "self._manifests.pop(None, None)",
        "the cache keeps the manifest from before the pin: the rewritten file has a new stamp (a new "
        "inode locally, a new ETag on S3), so _indexed reads it again",
    ),
    "stream.snapshots.xǁSnapshotStoreǁpin__mutmut_14": Equivalent(
        "self.folder.replace(entry, MANIFEST, manifest.model_dump_json(indent=None).encode())",
        "the pinned manifest's JSON without indentation: every reader parses it "
        "(model_validate_json); nothing compares manifest bytes or sizes",
    ),
    "stream.snapshots.xǁSnapshotStoreǁpin__mutmut_15": Equivalent(
        "self.folder.replace(entry, MANIFEST, manifest.model_dump_json(indent=3).encode())",
        "indentation 3 instead of 2: as pin__mutmut_14, only the layout of the JSON",
    ),
}


def results() -> dict[str, str]:
    """Every mutant's status, from ``mutmut results --all true``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    listing = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$", listing, re.MULTILINE))


def module_of(mutant: str) -> str:
    return mutant.split(".x")[0]


def shows_change(mutant: str, change: str) -> bool:
    """Whether ``mutmut show`` of ``mutant`` has ``change`` among the lines it adds."""
    mutmut = Path(sys.executable).with_name("mutmut")
    diff = subprocess.run([str(mutmut), "show", mutant], capture_output=True, text=True).stdout
    added = {" ".join(line[1:].split()) for line in diff.splitlines() if line.startswith("+")}
    return " ".join(change.split()) in added


def main() -> int:
    statuses = results()
    if not statuses:
        print("no mutants: run `mutmut run` first")
        return 1
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for mutant, status in sorted(statuses.items()):
        counts = by_module[module_of(mutant)]
        if status in CAUGHT:
            counts["caught"] += 1
        elif mutant in EQUIVALENT and shows_change(mutant, EQUIVALENT[mutant].change):
            counts["equivalent"] += 1
        else:
            counts["survived"] += 1
            renamed = (
                " (listed as equivalent, but it changes another line now)" if mutant in EQUIVALENT else ""
            )
            survivors.append(f"{mutant}: {status}{renamed}")
    print(f"{'module':<24} {'mutants':>8} {'caught':>7} {'equivalent':>10} {'survived':>8} {'score':>7}")
    failing = []
    total: Counter[str] = Counter()
    for module, counts in sorted(by_module.items()):
        total.update(counts)
        score = _score(counts)
        mutants = sum(counts.values())
        print(
            f"{module:<24} {mutants:>8} {counts['caught']:>7} {counts['equivalent']:>10} "
            f"{counts['survived']:>8} {score:>7.1%}"
        )
        if score < REQUIRED:
            failing.append(module)
    print(f"{'all':<24} {sum(total.values()):>8} {total['caught']:>7} {total['equivalent']:>10} "
          f"{total['survived']:>8} {_score(total):>7.1%}")  # fmt: skip
    if survivors:
        print("\nsurvivors (`mutmut show NAME` shows the change):")
        print("\n".join(f"  {line}" for line in survivors))
    stale = sorted(set(EQUIVALENT) - set(statuses))
    if stale:
        print(f"\nequivalent mutants that no longer exist (the code changed): {', '.join(stale)}")
    if failing:
        print(f"\nbelow {REQUIRED:.0%}: {', '.join(failing)}")
        return 1
    return 0


def _score(counts: Counter[str]) -> float:
    judged = counts["caught"] + counts["survived"]
    return counts["caught"] / judged if judged else 1.0


if __name__ == "__main__":
    sys.exit(main())
