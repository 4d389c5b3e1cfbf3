"""One valid example of every message, for round trips and live tests."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import (
    AppsQuery,
    AppsReply,
    AppView,
    BridgeStatus,
    CordonChanged,
    CordonRequest,
    DeleteRequest,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    JobCancel,
    JobDelete,
    JobEnded,
    JobForgotten,
    JobSeal,
    JobsQuery,
    JobsReply,
    JobSubmit,
    JobView,
    JournalMarker,
    JournalSnapshot,
    KeyIssued,
    KeyReply,
    KeysQuery,
    KeysReply,
    KeyView,
    LeaderTookOver,
    LogBatch,
    LogLine,
    Message,
    MetricSample,
    NodeAlive,
    NodeHeartbeat,
    NodePresence,
    NodesQuery,
    NodesReply,
    NodeView,
    PauseReplica,
    Presence,
    PresenceCause,
    PresenceState,
    QuotaChanged,
    QuotaSet,
    RenewToken,
    ReplicaRef,
    ReplicaReport,
    ReplicaStart,
    ReplicaState,
    ReplicaStatus,
    ReplicaStop,
    ReplicaToken,
    ReplicaTokenReply,
    ReplicaTokenRequest,
    ReplicaUsage,
    ReplicaView,
    RequestResult,
    Resources,
    ResumeReplica,
    ScaleRequest,
    SnapshotApp,
    StartReplica,
    StartReplicas,
    StopReplica,
    StopReplicas,
    TokenIssue,
    TokenRevoke,
    UsageQuery,
    UsageReply,
    UsageRow,
)

AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ONE_CPU = Resources(cpu_millicores=1000, memory_mib=512)
BUSY = Presence(state=PresenceState.BUSY, cause=PresenceCause.SESSION, since=AT, detail="tty7")


def deploy(
    namespace: str = "alice", app: str = "stereo", request_id: str = "req-0001"
) -> DeployRequest:
    """A deploy request of the thesis's shape: 15 replicas of 1 CPU."""
    return DeployRequest(
        request_id=request_id,
        namespace=namespace,
        app=app,
        image="idlecloud/stereo:1",
        command=("python", "-m", "stereo.worker"),
        env={"LOG_LEVEL": "info"},
        ports=(8080,),
        replicas=15,
        cpu_millicores=1000,
        memory_mib=512,
        node_selector={"room": "lab3"},
    )


KEY = KeyView(key_id="0123456789abcdef", role="user", subject="alice", name="Alice",
              expires_at=AT)  # fmt: skip

JOB_ID = "j0123456789abcdef0123"

EXAMPLES: dict[type[Message], Message] = {
    DeployRequest: deploy(),
    ScaleRequest: ScaleRequest(request_id="req-0002", namespace="alice", app="stereo", replicas=3),
    DeleteRequest: DeleteRequest(request_id="req-0003", namespace="alice", app="stereo"),
    RequestResult: RequestResult(
        request_id="req-0001", namespace="alice", accepted=False, reason="quota: 16000m > 6000m"
    ),
    QuotaSet: QuotaSet(
        request_id="req-0004", namespace="alice", cpu_millicores=6000, memory_mib=8192
    ),
    CordonRequest: CordonRequest(
        request_id="req-0005", node="edge", action="drain", reason="repair"
    ),
    NodeHeartbeat: NodeHeartbeat(
        node="edge",
        seq=42,
        sent_at=AT,
        capacity=Resources(cpu_millicores=8000, memory_mib=16384),
        allocatable=Resources(cpu_millicores=7000, memory_mib=14336),
        usage=Resources(cpu_millicores=2100, memory_mib=3000),
        presence=BUSY,
        replicas=(
            ReplicaReport(
                replica_id="stereo-1a2b3c",
                namespace="alice",
                app="stereo",
                state=ReplicaState.PAUSED,
                reservation=ONE_CPU,
                usage=Resources(cpu_millicores=0, memory_mib=210),
            ),
        ),
        labels={"room": "lab3"},
        runtime="docker",
    ),
    NodeAlive: NodeAlive(node="edge", seq=43, sent_at=AT),
    NodePresence: NodePresence(node="edge", presence=BUSY),
    ReplicaStatus: ReplicaStatus(
        node="edge",
        replica_id="stereo-1a2b3c",
        namespace="alice",
        app="stereo",
        state=ReplicaState.EXITED,
        at=AT,
        reason="exited",
        exit_code=1,
        log_tail=("Traceback (most recent call last):", "ValueError: bad pair"),
    ),
    MetricSample: MetricSample(
        node="edge",
        at=AT,
        cpu_millicores=2100,
        memory_mib=3000,
        capacity=Resources(cpu_millicores=8000, memory_mib=16384),
        reserved=ONE_CPU,
        presence=PresenceState.IDLE,
        replicas=(
            ReplicaUsage(
                replica_id="stereo-1a2b3c",
                namespace="alice",
                app="stereo",
                cpu_millicores=990,
                memory_mib=200,
                cpu_s=1234.5,
                reserved_cpu_millicores=1000,
            ),
        ),
    ),
    StartReplica: StartReplica(
        node="edge",
        epoch=7,
        replica_id="stereo-1a2b3c",
        namespace="alice",
        app="stereo",
        image="idlecloud/stereo:1",
        command=("python", "-m", "stereo.worker"),
        reservation=ONE_CPU,
        token="eyJhbGciOiJSUzI1NiJ9.secret-token-body.signature",
    ),
    StartReplicas: StartReplicas(
        node="edge",
        epoch=7,
        starts=(
            ReplicaStart(
                replica_id="stereo-1a2b3c", namespace="alice", app="stereo",
                image="idlecloud/stereo:1", reservation=ONE_CPU, token="eyJ.one.sig",
            ),
            ReplicaStart(
                replica_id="stereo-4d5e6f", namespace="alice", app="stereo",
                image="idlecloud/stereo:1", reservation=ONE_CPU, token="eyJ.two.sig",
            ),
        ),
    ),
    PauseReplica: PauseReplica(node="edge", epoch=7, replica_id="stereo-1a2b3c"),
    ResumeReplica: ResumeReplica(node="edge", epoch=7, replica_id="stereo-1a2b3c"),
    StopReplica: StopReplica(
        node="edge", epoch=7, replica_id="stereo-1a2b3c", grace_s=0, reason="replaced"
    ),
    StopReplicas: StopReplicas(
        node="edge",
        epoch=7,
        stops=(
            ReplicaStop(replica_id="stereo-1a2b3c", grace_s=0, reason="replaced"),
            ReplicaStop(replica_id="stereo-4d5e6f", reason="its app was deleted"),
        ),
    ),
    RenewToken: RenewToken(node="edge", epoch=7, replica_id="stereo-1a2b3c", token="eyJ.new.sig"),
    TokenIssue: TokenIssue(
        request_id="req-0006", role="user", subject="alice", limits=ONE_CPU, ttl_s=86_400
    ),
    TokenRevoke: TokenRevoke(request_id="req-0007", key_id="key-0123456789", reason="left the lab"),
    DeploymentStatus: DeploymentStatus(
        namespace="alice",
        app="stereo",
        state=DeploymentState.DEGRADED,
        desired=15,
        running=11,
        replicas_per_node={"edge": 7, "ninja": 4},
        reason="not enough free CPU for 4 replicas",
        at=AT,
    ),
    LeaderTookOver: LeaderTookOver(service="placement", instance="a1b2c3d4e5f6"),
    JournalMarker: JournalMarker(instance="a1b2c3d4e5f6", seq=3),
    JournalSnapshot: JournalSnapshot(
        through=41,
        apps=(SnapshotApp(request=deploy("alice", "stereo"), replicas=15, generation=12),),
        quotas={"alice": Resources(cpu_millicores=20_000, memory_mib=65_536)},
        cordons={"ninja": "drain"},
        leaders={"placement": 3, "quota": 2},
        keys=(KEY,),
        revoked={"key-0123456789": 40},
        applied={"req-0001": "0123456789abcdef0123456789abcdef"},
    ),
    AppsQuery: AppsQuery(namespace="alice", app="stereo"),
    AppsReply: AppsReply(
        namespace="alice",
        apps=(
            AppView(
                app="stereo",
                image="idlecloud/stereo:1",
                state=DeploymentState.DEGRADED,
                desired=15,
                running=11,
                reservation=Resources(cpu_millicores=1000, memory_mib=512),
                replicas_per_node={"edge": 7, "ninja": 4},
                replicas=(
                    ReplicaView(
                        replica_id="stereo-2-0a1b2c3d", node="edge", state=ReplicaState.RUNNING
                    ),
                ),
                reason="no PC can take a replica (2 x not enough free CPU)",
            ),
        ),
        quota=Resources(cpu_millicores=20_000, memory_mib=65_536),
        reserved=Resources(cpu_millicores=15_000, memory_mib=7680),
        running=Resources(cpu_millicores=11_000, memory_mib=5632),
        at=AT,
    ),
    KeyIssued: KeyIssued(request_id="req-0008", key=KEY),
    KeyReply: KeyReply(request_id="req-0008", accepted=True, key=KEY, api_key="eyJ.secret.sig"),
    KeysQuery: KeysQuery(),
    KeysReply: KeysReply(keys=(KEY,)),
    ReplicaTokenRequest: ReplicaTokenRequest(
        replicas=(ReplicaRef(namespace="alice", app="stereo", replica_id="stereo-2-0a1b2c3d"),)
    ),
    ReplicaTokenReply: ReplicaTokenReply(
        tokens=(ReplicaToken(replica_id="stereo-2-0a1b2c3d", token="eyJ.t.s", expires_at=AT),)
    ),
    QuotaChanged: QuotaChanged(
        namespace="alice", quota=Resources(cpu_millicores=20_000, memory_mib=65_536), at=AT
    ),
    CordonChanged: CordonChanged(node="edge", action="drain", reason="exam week", at=AT),
    BridgeStatus: BridgeStatus(
        api_reachable=True,
        nodes_mapped=4,
        cordoned=("edge.lab.example",),
        evicted_total=3,
        refused_total=1,
        pending_evictions=0,
        at=AT,
    ),
    NodesQuery: NodesQuery(after="edge", limit=1000),
    NodesReply: NodesReply(
        nodes=(
            NodeView(
                node="edge",
                state="busy",
                presence=PresenceState.BUSY,
                cause="session",
                capacity=Resources(cpu_millicores=8000, memory_mib=16_384),
                allocatable=Resources(cpu_millicores=7000, memory_mib=14_336),
                reserved=Resources(cpu_millicores=6000, memory_mib=3072),
                usage=Resources(cpu_millicores=10, memory_mib=900),
                replicas=6,
                runtime="process",
                seconds_since_heartbeat=0.4,
            ),
        ),
        at=AT,
        next_after="edge",
    ),
    JobSubmit: JobSubmit(
        request_id="req-0010", namespace="alice", job_id=JOB_ID, app="stereo", task="match",
        name="night run", total=2000, submitted_at=AT, submitter="user:alice:k1",
    ),
    JobSeal: JobSeal(request_id="req-0011", namespace="alice", job_id=JOB_ID, total=2000),
    JobCancel: JobCancel(request_id="req-0012", namespace="alice", job_id=JOB_ID),
    JobDelete: JobDelete(request_id="req-0013", namespace="alice", job_id=JOB_ID),
    JobEnded: JobEnded(
        namespace="alice", job_id=JOB_ID, state="done", done=1998, failed=2, duplicates=5,
        stored_bytes=180_000, nodes=("edge", "ninja"), at=AT,
    ),
    JobsQuery: JobsQuery(namespace="alice", job_id=JOB_ID),
    JobForgotten: JobForgotten(namespace="alice", job_id=JOB_ID),
    UsageQuery: UsageQuery(namespace="alice", since=AT, by="day"),
    UsageReply: UsageReply(
        namespace="alice", by="app", since=AT, until=AT,
        rows=(UsageRow(namespace="alice", app="stereo", reserved_cpu_s=7200.0,
                       used_cpu_s=5400.5, replicas=2, nodes=("edge", "ninja"), first_at=AT,
                       last_at=AT),),
    ),
    LogBatch: LogBatch(
        node="edge", replica_id="stereo-2-0a1b2c3d", namespace="alice", app="stereo", seq=0,
        lines=(LogLine(at=AT, text="matched pair 7"),
               LogLine(at=AT, stream="platform", text="[idlecloud] 3+ lines dropped")),
    ),
    JobsReply: JobsReply(
        namespace="alice",
        jobs=(
            JobView(
                job_id=JOB_ID, name="night run", app="stereo", task="match", state="running",
                total=2000, done=1500, failed=2, duplicates=5, stored_bytes=130_000,
                submitted_at=AT, rate_per_s=41.5,
            ),
        ),
        stored_bytes=130_000, stored_bytes_limit=1024**3, retention_s=604_800, at=AT,
    ),
}  # fmt: skip
