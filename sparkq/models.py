"""Request bodies of the HTTP API, and the field types they share.

`extra="forbid"` turns a misspelt field into a 422 instead of a silent no-op.
"""

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field

_MAX_INT = 2**31 - 1  # SQLite stores up to 2**63 - 1; a timeout beyond 68 years is a typo
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
Text = Annotated[str, Field(max_length=100_000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptCreate(_Body):
    command: Name
    label: Optional[str] = None
    template_text: Text = ""
    description: Optional[str] = None
    category: Optional[str] = None
    active: bool = True


class PromptUpdate(_Body):
    command: Optional[Name] = None
    label: Optional[str] = None
    template_text: Optional[Text] = None
    description: Optional[str] = None
    category: Optional[str] = None
    active: Optional[bool] = None


class RoleCreate(_Body):
    key: Name
    label: Optional[str] = None
    description: Optional[str] = None
    active: bool = True


class RoleUpdate(_Body):
    key: Optional[Name] = None
    label: Optional[str] = None
    description: Optional[str] = None
    active: Optional[bool] = None


class TaskClassCreate(_Body):
    name: Name
    timeout: int = Field(gt=0, le=_MAX_INT)
    description: Optional[str] = None


class TaskClassUpdate(_Body):
    timeout: Optional[int] = Field(None, gt=0, le=_MAX_INT)
    description: Optional[str] = None


class ToolCreate(_Body):
    name: Name
    task_class: Name
    description: Optional[str] = None


class ToolUpdate(_Body):
    task_class: Optional[Name] = None
    description: Optional[str] = None


class ProjectCreate(_Body):
    id: Optional[Name] = None
    name: str = Field(min_length=1)
    repo_path: Optional[str] = None
    prd_path: Optional[str] = None


class ProjectUpdate(_Body):
    name: Optional[str] = Field(None, min_length=1)
    repo_path: Optional[str] = None
    prd_path: Optional[str] = None


class SessionCreate(_Body):
    project_id: Optional[str] = None
    name: Optional[str] = None


class QueueCreate(_Body):
    name: str = Field(min_length=1)
    session_id: Optional[str] = None


class ConfigPut(_Body):
    value: Any
    updated_by: Optional[str] = None


class TaskCreate(_Body):
    queue_id: str = Field(min_length=1)
    tool_name: str = Field(min_length=1)
    task_class: Optional[str] = None
    timeout: Optional[int] = Field(None, gt=0, le=_MAX_INT)
    payload: Any = None


class ClaimBody(_Body):
    queue_id: Optional[str] = None


class CompleteBody(_Body):
    result: Any = None


class FailBody(_Body):
    error: str = Field(min_length=1)
