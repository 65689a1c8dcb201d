"""The one error tree (``raykv/errors.py``): every class definite or indeterminate, documented,
listed in the module's tree, and every error survives pickling (Ray carries them as values)."""

from __future__ import annotations

import inspect
import pickle

from raykv import errors


def _classes():
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.RayKVError) and c.__module__ == "raykv.errors"
            and c not in (errors.RayKVError, errors.DefiniteError, errors.IndeterminateError)]


def test_every_error_is_definite_or_indeterminate_documented_and_in_the_tree() -> None:
    for cls in _classes():
        assert issubclass(cls, errors.DefiniteError) != issubclass(cls, errors.IndeterminateError), cls
        assert cls.__doc__, f"{cls.__name__} has no docstring"
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} is missing from the tree in errors.py"


def test_errors_with_fields_survive_pickling() -> None:
    cases = [
        errors.NotLeaderError(2, 3, 7),
        errors.CorruptStoreError("truncated", "/data/x"),
        errors.BatchPartiallyAppliedError("put_batch", [1], {2: errors.OperationTimeoutError("late")}),
        errors.ConfigError("tick_ms must be >= 1"),
    ]
    for error in cases:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    batch = pickle.loads(pickle.dumps(cases[2]))
    assert batch.applied == [1] and isinstance(batch.errors[2], errors.OperationTimeoutError)


def test_configuration_and_session_errors_are_not_raft_errors() -> None:
    assert not issubclass(errors.ConfigError, errors.RaftError) and issubclass(errors.ConfigError, ValueError)
    assert not issubclass(errors.SessionExpiredError, errors.RaftError)
