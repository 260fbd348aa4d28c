//! `drover.v1.QueueService`: pausing and resuming queues.

use crate::audit::Audit;
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::store::queues::QueueState;
use crate::store::Store;
use drover_core::validate::check_name;
use drover_proto::v1 as pb;
use drover_proto::v1::queue_service_server::QueueService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct QueuesApi {
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
}

fn to_pb(q: &QueueState) -> pb::QueueState {
    pb::QueueState {
        queue: q.queue.clone(),
        paused: q.paused,
        pending: q.pending.max(0) as u64,
        running: q.running.max(0) as u64,
    }
}

impl QueuesApi {
    async fn set(
        &self,
        audit: &mut Audit,
        queue: &str,
        paused: bool,
    ) -> Result<pb::QueueState, Error> {
        check_name("queue", queue)?;
        audit.target(format!("queue {queue}"));
        let principal = audit.principal().clone();
        principal.check_queue(queue).map_err(|e| audit.refused(e))?;
        self.store.set_queue_paused(queue, paused).await?;
        audit.ok();
        tracing::info!(queue, paused, "queue flow changed");
        if !paused {
            self.dispatcher.wake();
        }
        let state = self
            .store
            .list_queues()
            .await?
            .into_iter()
            .find(|q| q.queue == queue)
            .map(|q| to_pb(&q))
            .unwrap_or(pb::QueueState {
                queue: queue.to_string(),
                paused,
                ..Default::default()
            });
        Ok(state)
    }
}

#[tonic::async_trait]
impl QueueService for QueuesApi {
    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.QueueService/PauseQueue");
        let q = self.set(&mut audit, &req.into_inner().queue, true).await?;
        Ok(Response::new(pb::PauseQueueResponse { queue: Some(q) }))
    }

    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.QueueService/ResumeQueue");
        let q = self.set(&mut audit, &req.into_inner().queue, false).await?;
        Ok(Response::new(pb::ResumeQueueResponse { queue: Some(q) }))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListQueues", &r, &r.page_token);
        let size = crate::paging::page_size("page_size", r.page_size, 1000, 1000)?;
        let after = pager.cursor::<String>()?;
        // At most 1000 queues: paged by name in memory.
        let queues = self.store.list_queues().await?;
        let (queues, next) =
            crate::paging::page_sorted(queues, |q| q.queue.clone(), after.as_ref(), size);
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.iter().map(to_pb).collect(),
            next_page_token: pager.next(next.as_ref()),
        }))
    }
}
