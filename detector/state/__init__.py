"""Per-subject detector state, updated from new events only (see docs/streaming-state.md).

Not yet used by the stream worker or the batch command.
"""

from detector.state.anomaly import AnomalyDayState
from detector.state.automation_load import AutomationLoadState
from detector.state.automation_pattern import AutomationPatternState
from detector.state.chunk import Chunk, ChunkFindings
from detector.state.cost import AbnormalCostState
from detector.state.image_quota import ImageQuotaState
from detector.state.scorer import StateScorer
from detector.state.sharing import KeySharingState
from detector.state.table import SubjectStates

__all__ = ["AbnormalCostState", "AnomalyDayState", "AutomationLoadState", "AutomationPatternState", "Chunk", "ChunkFindings", "ImageQuotaState", "KeySharingState", "StateScorer", "SubjectStates"]
