//! The committer's hand-off to the bus: each stored message goes to each of
//! its recipients, with that recipient's seq.

use std::sync::Arc;

use super::Bus;
use crate::committer::Dispatch;
use crate::frames::EncodedChat;
use crate::sessions::Event;
use crate::store::Fanout;

/// Routes committed messages to their recipients through the bus. The push
/// body is encoded once and shared by every recipient.
pub struct BusDispatch(pub Arc<dyn Bus>);

impl Dispatch for BusDispatch {
    fn committed(&self, fanout: &Fanout) {
        let push = Arc::new(EncodedChat::new(fanout.message.clone()));
        for &(user, seq) in &fanout.deliveries {
            self.0.send(
                user,
                Event::Chat {
                    push: push.clone(),
                    seq,
                },
            );
        }
    }
}
