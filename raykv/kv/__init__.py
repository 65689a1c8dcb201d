"""The pure replicated state machine of raykv (stdlib only).

* :mod:`raykv.kv.commands` -- commands and results (frozen dataclasses);
* :mod:`raykv.kv.codec` -- their versioned binary encoding;
* :mod:`raykv.kv.limits` -- :class:`KVLimits` and the command validator;
* :mod:`raykv.kv.session` -- exactly-once client sessions and their blobs;
* :mod:`raykv.kv.ranges` -- which keys a group serves, and the range changes of resharding;
* :mod:`raykv.kv.backend` -- the storage interface and :class:`MemoryBackend`;
* :mod:`raykv.kv.machine` -- :class:`KVStateMachine`, the deterministic ``apply``.
"""

from .backend import KVBackend, MemoryBackend
from .codec import (
    FORMAT_VERSION,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
)
from .commands import (
    Batch,
    Cas,
    Command,
    Delete,
    ErrorCode,
    ExpireSessions,
    Failed,
    Flag,
    Ok,
    Op,
    Put,
    RangeChange,
    RegisterSession,
    Request,
    Result,
    SessionId,
)
from .limits import LMDB_MAX_KEY_BYTES, KVLimits, validate_command, validate_key, validate_value
from .machine import KVStateMachine
from .ranges import RangeAction, RangeState
from .session import Session

__all__ = [
    "FORMAT_VERSION", "LMDB_MAX_KEY_BYTES", "Batch", "Cas", "Command", "Delete", "ErrorCode",
    "ExpireSessions", "Failed", "Flag", "KVBackend", "KVLimits", "KVStateMachine", "MemoryBackend",
    "Ok", "Op", "Put", "RangeAction", "RangeChange", "RangeState", "RegisterSession", "Request", "Result", "Session", "SessionId",
    "decode_command", "decode_result", "encode_command", "encode_result", "validate_command",
    "validate_key", "validate_value",
]
