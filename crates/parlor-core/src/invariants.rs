//! The hub's state invariants, checked after every step by the tests and
//! the session fuzz body (see the crate documentation).

use crate::{Hub, Room};
use parlor_proto::printable::Printable;

impl Hub {
    /// Checks the hub's internal consistency; used by tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (name, conn) in self.directory.user_names() {
            match self.users.get(&conn) {
                Some(user) if user.name == name => {}
                _ => {
                    return Err(format!(
                        "name {} held by unknown or renamed {conn}",
                        Printable(name)
                    ))
                }
            }
        }
        for (conn, user) in &self.users {
            // A new connection of a clustered hub has no name until the
            // cluster gives it one.
            let unnamed = user.name.is_empty() && self.in_cluster();
            if !unnamed && self.directory.find_user(&user.name) != Some(*conn) {
                return Err(format!(
                    "{conn} does not hold its name {}",
                    Printable(&user.name)
                ));
            }
            if let Some(room) = &user.room {
                let members = self.directory.room(room).map_or(&[][..], Room::members);
                if members.iter().filter(|member| *member == conn).count() != 1 {
                    return Err(format!("{conn} is not exactly once in its room"));
                }
            }
        }
        for (name, room) in self.directory.rooms() {
            if room.members().is_empty() {
                return Err(format!("room {} is empty", Printable(name)));
            }
            for member in room.members() {
                let in_room = self.users.get(member).and_then(|user| user.room.as_ref());
                if in_room != Some(name) {
                    return Err(format!(
                        "{member} listed in room {} it is not in",
                        Printable(name)
                    ));
                }
            }
        }
        self.check_secure_invariants()?;
        self.transfers
            .check_invariants(|conn| self.users.contains_key(&conn) || self.stands_in(conn))
    }
}
